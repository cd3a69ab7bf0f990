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

from .conftest import cli

pytestmark = pytest.mark.slow


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
