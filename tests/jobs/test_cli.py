"""The CLI as a user runs it: validate, run, re-run, resume after SIGKILL, inspect, help."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import build_parser

from .conftest import cli

COMMANDS = ("run", "validate", "submit", "status", "logs", "stop", "inspect", "demo")


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]):
    top = cli("--help").stdout  # the installed entry point, as a user calls it
    assert all(command in top for command in COMMANDS)
    assert set(COMMANDS) <= set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    for command in COMMANDS:  # each command's own help, from the same parser, without a process each
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: unidiffuser-batch " + command in capsys.readouterr().out


def test_validate_accepts_a_runnable_spec(prompt_spec):
    proc = cli("validate", str(prompt_spec()))
    assert proc.stdout.startswith("ok:")


@pytest.mark.slow
def test_validate_reports_every_problem_with_its_key_path(prompt_spec, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = prompt_spec()
    proc = cli(
        "validate", str(spec), "--set", f"input.uri={tmp_path / 'missing.txt'}",
        "--set", "model.checkpoint=/nowhere/ckpt", "--set", f"output.uri={blocker / 'out'}",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    for path in (
        "input.uri: nothing found",
        "model.checkpoint: checkpoint folder not found: /nowhere/ckpt",
        "output.uri: cannot write",
    ):
        assert path in proc.stderr, proc.stderr
    structural = cli("validate", str(spec), "--set", "model.steps=0", "--set", "model.mode=i2t", check=False)
    assert structural.returncode == 2
    assert (
        "model.steps" in structural.stderr
        and "model.mode 'i2t' needs input.kind 'images'" in structural.stderr
    )


@pytest.mark.slow
def test_run_inspect_rerun_and_resume_report_exactly_what_each_run_did(
    prompt_spec, tmp_path: Path, ray_address: str
):
    """One job through its life: plan, run, inspect, a no-op re-run, a resume after a lost commit, a changed input.
    Each command is a driver of its own on the session's Ray, as on a cluster (the SIGKILL test below and the
    demo test start a local Ray, as a first run on a laptop does)."""
    import json

    spec = prompt_spec(n_prompts=6, shard_size=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\na green triangle\na red square\na blue circle\n")
    out = tmp_path / "out"
    plan = cli("validate", str(spec), "--plan", ray_address=ray_address).stdout
    assert "plan: 6 records in 3 units: 0 committed and kept, 3 to run (0 of them" in plan

    first = cli("run", str(spec), "--quiet", ray_address=ray_address)
    assert "6 inputs -> 5 written, 0 rejected, 1 errored" in first.stdout  # the empty line is an error row
    ran = json.loads((out / "_summary.json").read_text())
    assert (ran["run"]["units_run"], ran["run"]["records_run"]) == (3, 6)

    sheet = tmp_path / "sheet.png"
    report = cli("inspect", str(out), "--sheet", str(sheet)).stdout
    assert "records  6 inputs -> 5 written, 0 rejected, 1 errored" in report
    assert "input: empty prompt" in report and "clip_score histogram" in report
    with Image.open(sheet) as image:
        assert image.size[0] > 0 and image.mode == "RGB"

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_summary.json"}
    second = cli("run", str(spec), "--quiet", ray_address=ray_address)
    assert "nothing to do: all 3 units" in second.stdout and "(0 units run, 3 skipped)" in second.stdout
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_summary.json"}
    assert after == before  # a no-op run touches nothing but the summary
    idle = json.loads((out / "_summary.json").read_text())
    assert (idle["run"]["units_run"], idle["run"]["records_run"], idle["run"]["records_per_s"]) == (
        0,
        0,
        None,
    )
    assert idle["last_work_run"] == ran["run"]  # the last run that did work is kept, not overwritten

    (out / "_units" / "00001.json").unlink()  # as if the run had died before committing unit 1
    cli("run", str(spec), "--quiet", ray_address=ray_address)
    resumed = json.loads((out / "_summary.json").read_text())
    assert (resumed["run"]["units_run"], resumed["run"]["records_run"]) == (1, 2)
    assert resumed["run"]["records_per_s"] == pytest.approx(2 / resumed["run"]["wall_time_s"], rel=1e-2)
    assert (resumed["written"], resumed["errored"]) == (5, 1)  # the job's totals are still the whole job's

    prompts.write_text("a changed first prompt\n" * 2 + "two more\n" * 4)
    # the input changed: every unit is stale
    plan = cli("validate", str(spec), "--plan", ray_address=ray_address).stdout
    assert "committed and kept, 3 to run (3 of them committed before but stale)" in plan


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _images_by_key(out: Path) -> dict[str, bytes]:
    rows = {}
    for shard in sorted((out / "parquet").glob("*.parquet")):
        for row in pq.read_table(shard, columns=["key", "image"]).to_pylist():
            assert row["key"] not in rows, f"duplicate {row['key']}"
            rows[row["key"]] = row["image"]
    return rows


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_ray_behind_and_resumes_to_exactly_the_full_set(
    prompt_spec, tmp_path: Path, ray_address: str
):
    """The killed run starts a local Ray of its own (what must not outlive it); the reference and the resume
    are drivers on the session's Ray."""
    slow = {
        "steps": 30
    }  # units a second or more apart, so that the kill lands between commits even under load
    no_clip = {"enabled": False}  # the images are what is compared: no scorer actor to start three times
    reference = prompt_spec(n_prompts=12, shard_size=2, output="reference", model=slow, clip=no_clip)
    cli("run", str(reference), "--quiet", ray_address=ray_address)
    expected = _images_by_key(tmp_path / "reference")
    assert len(expected) == 12

    spec = prompt_spec(n_prompts=12, shard_size=2, output="killed", model=slow, clip=no_clip)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs", "run", str(spec), "--quiet", "--dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "_units").glob("*.json"))) < 2:
        time.sleep(0.05)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    dashboards = [p for p in descendants if "dashboard/dashboard.py" in " ".join(_cmdline(p))]
    committed_before_kill = len(list((out / "_units").glob("*.json")))
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
    proc.wait()
    assert 2 <= committed_before_kill < 6, "the kill must land mid-run"
    assert any("raylet" in p.name() for p in descendants if p.is_running()), "the driver started a local Ray"
    assert dashboards, "--dashboard started the local Ray's dashboard"
    _, alive = psutil.wait_procs(descendants, timeout=60)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"the local Ray outlived its driver: {[(p.pid, p.name()) for p in alive]}"
    assert not (out / "_summary.json").exists()

    resumed = cli("run", str(spec), "--quiet", ray_address=ray_address)
    assert "12 inputs -> 12 written" in resumed.stdout
    units_run = int(resumed.stdout.split(" units run")[0].rsplit("(", 1)[1])
    assert units_run <= 6 - committed_before_kill + 1  # at most the unit in flight is redone on top
    assert _images_by_key(out) == expected  # none missing, none duplicated, same bytes


def test_inspect_of_an_unfinished_output_fails_clearly(tmp_path: Path):
    proc = cli("inspect", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no _summary.json" in proc.stderr


def test_jobs_api_commands_fail_clearly_when_the_head_is_unreachable(prompt_spec):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused at once
        for args in (("status", "raysubmit_1"), ("logs", "raysubmit_1"), ("submit", str(prompt_spec()))):
            proc = cli(*args, "--address", nobody, check=False)
            assert proc.returncode == 2, proc.stderr
            assert f"cannot reach the Ray Jobs API at {nobody}" in proc.stderr
            assert "Traceback" not in proc.stderr


# --- one clear line for every failure that can be known before work starts -----------------------------------


@pytest.mark.slow
def test_a_cluster_too_small_for_the_job_is_one_line_before_any_work(prompt_spec, ray_address: str):
    spec = str(prompt_spec())
    proc = cli("run", spec, "--set", "resources.cpus_per_actor=64", check=False, ray_address=ray_address)
    assert proc.returncode == 2, proc.stderr
    assert "cannot run: the cluster cannot run this job (CPU: needs 65.5, cluster has" in proc.stderr
    assert "Traceback" not in proc.stderr and "ClusterTooSmallError" not in proc.stderr


@pytest.fixture()
def damaged_checkpoint(tiny_models: tuple[Path, Path], tmp_path: Path):
    """A copy of the tiny checkpoint, damaged by the test."""
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(tiny_models[0], copy)
    return copy


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: _truncate(c / "unet" / "diffusion_pytorch_model.safetensors"),
         "unet/diffusion_pytorch_model.safetensors: truncated"),
        (lambda c: _edit_json(c / "unet" / "config.json", drop="sample_size"),
         "unet/config.json lacks 'sample_size'"),
        (lambda c: (c / "unet" / "config.json").write_text("{not json"), "unet/config.json is not valid JSON"),
        (lambda c: (c / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "no weights in"),
    ],
    ids=["truncated-weights", "no-sample-size", "unparseable-config", "missing-weights"],
)  # fmt: skip
@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_by_validate_and_run(prompt_spec, damaged_checkpoint, damage, message):
    damage(damaged_checkpoint)
    spec = prompt_spec(model={"checkpoint": str(damaged_checkpoint), "mode": "t2i", "steps": 2})
    for command in ("validate", "run"):
        proc = cli(command, str(spec), check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        assert message in proc.stderr and str(damaged_checkpoint) in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, *, drop: str) -> None:
    import json

    config = json.loads(path.read_text())
    del config[drop]
    path.write_text(json.dumps(config))


def test_a_uri_with_credentials_is_refused_without_echoing_them(prompt_spec):
    secret = "s3://AKIDEXAMPLE:wJalrXUtnFEMIsecret@bucket/models/ckpt"
    proc = cli("validate", str(prompt_spec()), "--set", f"model.checkpoint={secret}", check=False)
    assert proc.returncode == 2
    assert "model.checkpoint: credentials in a URI are not used (s3://bucket/models/ckpt)" in proc.stderr
    assert "wJalrXUtnFEMIsecret" not in proc.stderr + proc.stdout and "AKIDEXAMPLE" not in proc.stderr


@pytest.mark.slow
def test_an_unreachable_location_is_named(prompt_spec):
    proc = cli(
        "validate", str(prompt_spec()), "--set", "model.checkpoint=s3://bucket/models/ckpt",
        "--set", "storage.endpoint_url=http://127.0.0.1:9", check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "model.checkpoint: cannot reach s3://bucket/models/ckpt: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
