"""Cluster submission through the Ray Jobs API against a real local Ray head (with its dashboard)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs import submit as jobs_api
from pipelines.config import PipelineConfig

from .conftest import cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def ray_head(tmp_path: Path):
    """A separate Ray head with the Jobs API on loopback, in its own process group (killed afterwards)."""
    port, dashboard = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(
        prefix="ray-", dir="/tmp"
    )  # short: Ray's unix socket paths are length-limited
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}",
               "--disable-usage-stats"]  # fmt: skip
    # the agents' default ports are fixed: a second Ray on this machine (another test package's local Ray)
    # would hold them, and the head would answer "No available agent" to every submission
    command += [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "metrics-export-port",
                                                         "runtime-env-agent-port")]  # fmt: skip
    # a loopback-only test cluster: no token auth (real clusters pass RAY_AUTH_TOKEN to the CLI as to `ray job`)
    # and the project's console scripts on PATH, as in the container image
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    head = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dashboard), timeout=0.5):
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the Ray head's dashboard did not come up")
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield address
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        os.killpg(head.pid, signal.SIGKILL)  # the head and every daemon it started (same process group)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_submit_status_logs(ray_head: str, prompt_spec, tmp_path: Path):
    spec = prompt_spec(n_prompts=2, shard_size=2)
    job_id = cli("submit", str(spec), "--address", ray_head).stdout.strip()
    assert job_id
    deadline = time.monotonic() + 240
    status = ""
    while time.monotonic() < deadline:
        status = cli("status", job_id, "--address", ray_head).stdout.strip()
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = cli("logs", job_id, "--address", ray_head).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert "2 inputs -> 2 written" in logs
    assert (tmp_path / "out" / "_summary.json").exists()
    assert cli("stop", job_id, "--address", ray_head).stdout.strip() == "not running"


class _HeadStartingUp:
    """A Jobs API client whose head answers "No available agent" ``busy`` times before accepting a job."""

    def __init__(
        self, busy: int, failure: str = "No available agent to submit job, please try again later.."
    ):
        self.busy, self.failure, self.calls = busy, failure, 0

    def submit_job(self, **kwargs) -> str:
        self.calls += 1
        if self.calls <= self.busy:
            raise RuntimeError(f"Request failed with status code 500: {self.failure}")
        assert (Path(kwargs["runtime_env"]["working_dir"]) / jobs_api.SPEC_NAME).exists()
        return "raysubmit_1"


def _config(tmp_path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "input": {"kind": "count", "count": 1},
            "model": {"checkpoint": "ckpt", "mode": "joint"},
            "output": {"uri": str(tmp_path / "out")},
        }  # fmt: skip
    )


def test_submit_waits_for_a_starting_heads_job_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobs_api.time, "sleep", lambda seconds: None)
    head = _HeadStartingUp(busy=3)
    monkeypatch.setattr(jobs_api, "_client", lambda address: head)
    assert jobs_api.submit(_config(tmp_path), address="http://head:8265") == "raysubmit_1"
    assert head.calls == 4
    gone = _HeadStartingUp(busy=10**6)
    monkeypatch.setattr(jobs_api, "_client", lambda address: gone)
    with pytest.raises(RuntimeError, match="No available agent"):
        jobs_api.submit(_config(tmp_path), address="http://head:8265", agent_wait_s=0.0)
    assert gone.calls == 1
    broken = _HeadStartingUp(busy=1, failure="runtime_env invalid")
    monkeypatch.setattr(jobs_api, "_client", lambda address: broken)
    with pytest.raises(RuntimeError, match="runtime_env invalid"):
        jobs_api.submit(_config(tmp_path), address="http://head:8265")
    assert broken.calls == 1  # any other error is not retried
