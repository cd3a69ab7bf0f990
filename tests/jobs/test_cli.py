"""The CLI as a user runs it: validate, run, re-run, resume after SIGKILL, inspect, help."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import build_parser

from .conftest import cli

COMMANDS = ("run", "validate", "submit", "status", "logs", "stop", "inspect", "demo")


def test_every_command_has_help():
    assert set(COMMANDS) <= set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    for command in COMMANDS:
        out = cli(command, "--help").stdout
        assert "usage: unidiffuser-batch " + command in out


def test_validate_accepts_a_runnable_spec(prompt_spec):
    proc = cli("validate", str(prompt_spec()))
    assert proc.stdout.startswith("ok:")


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
        "model.checkpoint: missing config file",
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
def test_run_then_rerun_does_no_model_work(prompt_spec):
    spec = prompt_spec(n_prompts=4, shard_size=2)
    plan = cli("validate", str(spec), "--plan").stdout
    assert "plan: 4 records in 2 units: 0 committed and kept, 2 to run (0 of them" in plan
    first = cli("run", str(spec), "--quiet")
    assert "4 inputs -> 4 written, 0 rejected, 0 errored" in first.stdout
    out = Path(spec).parent / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_summary.json"}
    second = cli("run", str(spec), "--quiet")
    assert "nothing to do: all 2 units" in second.stdout
    assert "(0 units run, 2 skipped)" in second.stdout
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_summary.json"}
    assert after == before
    (Path(spec).parent / "prompts.txt").write_text("a changed first prompt\n" * 2 + "two more\n" * 2)
    plan = cli("validate", str(spec), "--plan").stdout  # the input changed: both units are stale
    assert "2 committed and kept" not in plan and "2 to run (2 of them committed before but stale)" in plan


def _images_by_key(out: Path) -> dict[str, bytes]:
    rows = {}
    for shard in sorted((out / "shards").glob("*.parquet")):
        for row in pq.read_table(shard, columns=["key", "image"]).to_pylist():
            assert row["key"] not in rows, f"duplicate {row['key']}"
            rows[row["key"]] = row["image"]
    return rows


@pytest.mark.slow
def test_sigkilled_run_resumes_to_exactly_the_full_set(prompt_spec, tmp_path: Path):
    reference = prompt_spec(n_prompts=12, shard_size=2, output="reference")
    cli("run", str(reference), "--quiet")
    expected = _images_by_key(tmp_path / "reference")
    assert len(expected) == 12

    spec = prompt_spec(n_prompts=12, shard_size=2, output="killed")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs", "run", str(spec), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "_units").glob("*.json"))) < 2:
        time.sleep(0.2)
    committed_before_kill = len(list((out / "_units").glob("*.json")))
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    assert 2 <= committed_before_kill < 6, "the kill must land mid-run"
    assert not (out / "_summary.json").exists()

    resumed = cli("run", str(spec), "--quiet")
    assert "12 inputs -> 12 written" in resumed.stdout
    units_run = int(resumed.stdout.split(" units run")[0].rsplit("(", 1)[1])
    assert units_run <= 6 - committed_before_kill + 1  # at most the unit in flight is redone on top
    assert _images_by_key(out) == expected  # none missing, none duplicated, same bytes


@pytest.mark.slow
def test_inspect_prints_counts_and_writes_a_contact_sheet(prompt_spec, tmp_path: Path):
    spec = prompt_spec(n_prompts=3, shard_size=3)
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")  # one empty line -> error row
    cli("run", str(spec), "--quiet")
    sheet = tmp_path / "sheet.png"
    report = cli("inspect", str(tmp_path / "out"), "--sheet", str(sheet)).stdout
    assert "records  3 inputs -> 2 written, 0 rejected, 1 errored" in report
    assert "input: empty prompt" in report and "clip score histogram" in report
    with Image.open(sheet) as image:
        assert image.size[0] > 0 and image.mode == "RGB"


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
