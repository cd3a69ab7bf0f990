"""Faults: a generate actor killed mid-run, a 100 000-record stream with bounded driver memory, and engines that
fail on some records.

The GenerateStage subclasses are made by factory functions so that they are local classes: Ray
(cloudpickle) ships them to the actors by value, with their parameters, whatever the test module is called.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from stand_in_engines import FlatEngine, RaisingEngine, stage_with

from pipelines.config import PipelineConfig
from pipelines.run import run_pipeline
from pipelines.stages.generate import GenerateStage
from unidiffuser.tiny import write_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("ray_local")

RESOURCES = {
    "cpus_per_actor": 0.5,
    "clip_cpus_per_actor": 0.5,
    "writer_cpus": 0.5,
    "preprocess_cpus": 0.5,
    "batch_size": 4,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("models") / "unidiffuser", version=1))


def make_config(
    checkpoint: str,
    prompts: Path,
    output: Path,
    *,
    shard_size: int = 3,
    formats: tuple[str, ...] = ("parquet", "webdataset"),
    writers: int = 1,
) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {"checkpoint": checkpoint, "mode": "t2i", "steps": 2},
            "output": {"uri": str(output), "formats": list(formats), "shard_size": shard_size},
            "resources": RESOURCES | {"writers": writers},
        }
    )


def write_prompts(path: Path, lines: list[str]) -> list[str]:
    path.write_text("\n".join(lines) + "\n")
    return [f"{path.stem}-{i:09d}" for i in range(len(lines))]


def outcome_keys(root: Path) -> dict[str, list[str]]:
    """Keys in the shards (parquet and tar agree), rejected and errors files; checks the summary."""
    written: list[str] = []
    for shard in sorted((root / "parquet").glob("*.parquet")):
        keys = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
        tar_path = root / "webdataset" / f"{shard.stem}.tar"
        if tar_path.exists():
            with tarfile.open(tar_path) as tar:
                metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
            assert [m["key"] for m in metas] == keys
        written += keys
    found = {"written": written}
    for kind, folder in (("rejected", "rejected"), ("errored", "errors")):
        found[kind] = [
            k for f in sorted((root / folder).glob("*.parquet")) for k in pq.read_table(f)["key"].to_pylist()
        ]
    summary = json.loads((root / "_summary.json").read_text())
    assert summary["inputs"] == summary["written"] + summary["rejected"] + summary["errored"]
    assert {k: summary[k] for k in found} == {k: len(v) for k, v in found.items()}
    markers = sorted(p.name for p in (root / "_units").glob("*.json"))
    assert markers == [f"{u:05d}.json" for u in range(summary["units"])]
    return found


def assert_each_key_once(found: dict[str, list[str]], expected: list[str]) -> None:
    every = [k for keys in found.values() for k in keys]
    duplicates = {k: n for k, n in Counter(every).items() if n > 1}
    assert not duplicates, f"keys in more than one place or written twice: {duplicates}"
    assert sorted(every) == sorted(expected)


# --- an actor killed mid-run ---------------------------------------------------------------------------------


def crash_once_stage(flag_dir: str, crash_unit: int) -> type[GenerateStage]:
    """A stand-in generate stage that kills its actor process the first time it is handed ``crash_unit``."""

    class CrashOnceStage(stage_with(FlatEngine(64))):
        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            unit = int(batch["unit"].iloc[0])
            Path(flag_dir, f"call-{unit:05d}-{uuid.uuid4().hex}").touch()
            crashed = Path(flag_dir, f"crashed-{unit:05d}")
            if unit == crash_unit and not crashed.exists():
                crashed.touch()
                os._exit(1)  # the actor process dies like a segfault / OOM kill: no exception, no cleanup
            return super().__call__(batch)

    return CrashOnceStage


@pytest.mark.slow
def test_generate_actor_crash_is_retried_without_duplicates(checkpoint: str, tmp_path: Path) -> None:
    lines = [f"prompt number {i}" for i in range(10)] + [""]
    keys = write_prompts(tmp_path / "p.txt", lines)
    flags = tmp_path / "flags"
    flags.mkdir()
    out = tmp_path / "out"
    report = run_pipeline(
        make_config(checkpoint, tmp_path / "p.txt", out, shard_size=3),
        generate_cls=crash_once_stage(str(flags), crash_unit=1),
        progress=False,
    )
    assert (flags / "crashed-00001").exists(), "the injected crash did not happen"
    calls = Counter(re.match(r"call-(\d+)-", p.name).group(1) for p in flags.glob("call-*"))
    assert calls["00001"] == 2, f"unit 1 must be handed to a (restarted) actor again: {dict(calls)}"
    assert report.units_total == 4 and report.units_run == 4
    found = outcome_keys(out)
    assert_each_key_once(found, keys)
    assert found["errored"] == [keys[-1]] and len(found["written"]) == 10
    assert report.summary["written"] == 10 and report.summary["errored"] == 1


# --- 100 000 records, bounded driver memory ------------------------------------------------------------------


class PeakRss:
    """The driver's peak RSS, sampled every 10 ms in a thread, relative to the RSS at start."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


@pytest.mark.slow
def test_100k_prompts_stream_with_bounded_driver_memory(checkpoint: str, tmp_path: Path) -> None:
    n, width = 100_000, 2000
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(512)])
    bodies = [" ".join(rng.choice(words, width // 8)) for _ in range(997)]  # prime: neighbours differ
    path = tmp_path / "big.txt"
    with path.open("w") as f:  # each record unique by its number
        f.writelines(f"{i} {bodies[i % len(bodies)]}"[:width].ljust(width, "x") + "\n" for i in range(n))
    data_bytes = path.stat().st_size
    assert data_bytes >= n * width
    out = tmp_path / "out"
    # two writers, one per core: the writer (a JPEG, its marks and its pHash per record) is this test's work
    config = make_config(checkpoint, path, out, shard_size=5000, formats=("parquet",), writers=2)
    with PeakRss() as rss:
        report = run_pipeline(config, generate_cls=stage_with(FlatEngine()), progress=False)
    output_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    mib = 1 << 20
    message = (
        f"driver RSS grew by {rss.growth / mib:.1f} MiB (from {rss.start / mib:.1f} to a peak of "
        f"{rss.peak / mib:.1f} MiB) while {data_bytes / mib:.1f} MiB of prompts ({n} records) went through "
        f"and {output_bytes / mib:.1f} MiB were written"
    )
    print(message)
    assert rss.growth < data_bytes / 4, message
    assert report.units_total == 20 and report.summary["units"] == 20
    assert report.summary["inputs"] == report.summary["written"] == n, report.summary
    keys = []
    for shard in sorted((out / "parquet").glob("*.parquet")):
        table = pq.read_table(shard, columns=["key", "prompt"])
        assert table.num_rows == 5000
        keys += table.column("key").to_pylist()
    assert keys == [f"big-{i:09d}" for i in range(n)]  # every record once, in input order
    assert not (out / "errors").exists() and not (out / "rejected").exists()


# --- engines that fail on some records -----------------------------------------------------------------------


def failing_encoder_stage(poison: str) -> type[GenerateStage]:
    """The real engine, whose prompt encoder raises RuntimeError for any batch holding ``poison``."""

    class FailingEncoderStage(GenerateStage):
        def __init__(self, config: PipelineConfig, checkpoint_identity: str | None = None):
            super().__init__(config, checkpoint_identity)
            encode = self.engine._encode_prompts

            def encode_or_fail(prompts: list[str]):
                if any(poison in p for p in prompts):
                    raise RuntimeError(f"simulated failure on {poison!r}")
                return encode(prompts)

            self.engine._encode_prompts = encode_or_fail

    return FailingEncoderStage


@pytest.mark.slow
def test_engine_failures_on_some_records_become_error_rows(checkpoint: str, tmp_path: Path) -> None:
    lines = ["a red circle", "POISON one", "a blue square", "a green star", "POISON two", "a grey moon"]
    keys = write_prompts(tmp_path / "p.txt", lines)
    out = tmp_path / "out"
    report = run_pipeline(
        make_config(checkpoint, tmp_path / "p.txt", out, shard_size=6),  # one unit, batches of 4
        generate_cls=failing_encoder_stage("POISON"),
        progress=False,
    )
    found = outcome_keys(out)
    assert_each_key_once(found, keys)
    poisoned = {keys[1], keys[4]}
    assert set(found["errored"]) == poisoned and set(found["written"]) == set(keys) - poisoned
    errors = pq.read_table(out / "errors" / "00000.parquet").to_pylist()
    for row in errors:
        assert row["reason"].startswith("engine: ") and "simulated failure on 'POISON'" in row["reason"], row
        assert row["prompt"].startswith("POISON")
    assert sum(report.summary["error_reasons"].values()) == 2


@pytest.mark.slow
def test_engine_that_raises_for_a_batch_yields_error_rows_not_a_crashed_job(
    checkpoint: str, tmp_path: Path
) -> None:
    lines = ["fine one", "POISON", "fine two", "fine three"]
    keys = write_prompts(tmp_path / "p.txt", lines)
    out = tmp_path / "out"
    run_pipeline(
        make_config(checkpoint, tmp_path / "p.txt", out, shard_size=2),
        generate_cls=stage_with(RaisingEngine("POISON")),
        progress=False,
    )
    found = outcome_keys(out)
    assert_each_key_once(found, keys)
    assert keys[1] in found["errored"]
    reasons = [r["reason"] for f in (out / "errors").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert any("simulated engine bug" in reason for reason in reasons)
    assert set(keys[2:]) <= set(found["written"])  # other units are unaffected


def test_a_checkpoint_replaced_after_planning_fails_the_actor_loudly(checkpoint: str, tmp_path: Path) -> None:
    """Engine actors load the checkpoint version the job was planned with: one whose files changed since is
    an error naming both versions, never a silent switch of model in the middle of a job."""
    import shutil

    from unidiffuser.checkpoint import CheckpointChangedError, checkpoint_identity

    copy = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, copy)
    config = make_config(str(copy), tmp_path / "p.txt", tmp_path / "out")
    planned = checkpoint_identity(copy)
    assert GenerateStage(config, checkpoint_identity=planned).engine.components.path == copy
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # replaced
    with pytest.raises(
        CheckpointChangedError, match=f"changed since it was pinned \\(version {planned}, now "
    ):
        GenerateStage(config, checkpoint_identity=planned)


# --- units are committed as they finish, whatever the actors hold ---------------------------------------------


def slow_recording_stage(record_dir: str, delay_s: float) -> type[GenerateStage]:
    """A stand-in generate stage that takes ``delay_s`` per unit and notes when it started each one."""

    class SlowRecordingStage(stage_with(FlatEngine(64))):
        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            unit = int(batch["unit"].iloc[0])
            Path(record_dir, f"{unit:05d}.start").write_text(repr(time.time()))
            time.sleep(delay_s)
            return super().__call__(batch)

    return SlowRecordingStage


@pytest.mark.slow
def test_units_are_committed_while_later_units_are_still_generated(checkpoint: str, tmp_path: Path) -> None:
    """The writers are actors with their CPUs reserved, so a unit is committed as soon as it is judged: the
    first commit lands long before the last unit is generated (before, every write waited for the end)."""
    keys = write_prompts(tmp_path / "p.txt", [f"a shape number {i}" for i in range(16)])
    record = tmp_path / "record"
    record.mkdir()
    out = tmp_path / "out"
    config = make_config(checkpoint, tmp_path / "p.txt", out, shard_size=2)
    report = run_pipeline(config, generate_cls=slow_recording_stage(str(record), 0.5), progress=False)
    assert report.units_run == 8
    starts = sorted(float(p.read_text()) for p in record.glob("*.start"))
    commits = sorted(p.stat().st_mtime for p in (out / "_units").glob("*.json"))
    assert len(starts) == len(commits) == 8
    assert commits[0] < starts[-1], "the first unit must be committed before the last one starts generating"
    assert sum(c < starts[-1] for c in commits) >= 4, (commits, starts)
    assert_each_key_once(outcome_keys(out), keys)


@pytest.mark.slow
def test_preprocess_is_never_fused_into_the_engine_actors(checkpoint: str, tmp_path: Path) -> None:
    """Read + preprocess run as tasks of their own (fused with each other), the engine as its own actor pool:
    decoding must never hold a GPU actor. Proved from the operators Ray Data ran."""
    write_prompts(tmp_path / "p.txt", ["a red circle", "a blue square", "a green triangle"])
    report = run_pipeline(make_config(checkpoint, tmp_path / "p.txt", tmp_path / "out"), progress=False)
    operators = re.findall(r"Operator \d+ ([^:]+):", report.stats)
    assert "ReadUnits->MapBatches(preprocess_batch)" in operators, operators
    assert "MapBatches(GenerateStage)" in operators, operators
    assert not any("preprocess" in op and "GenerateStage" in op for op in operators), operators


# --- a file that cannot be read keeps the key the plan gave it -----------------------------------------------


@pytest.mark.slow
def test_an_unreadable_file_keeps_its_planned_key(checkpoint: str, tmp_path: Path) -> None:
    """A dangling symlink ``x.png`` beside a valid ``x-000000000.png``: its error row is keyed ``x``, as
    planned (before, ``x-000000000``: the other file's key, written twice with exit 0)."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    (images / "x.png").symlink_to(tmp_path / "nowhere.png")
    Image.new("RGB", (64, 64), "red").save(images / "x-000000000.png")
    Image.new("RGB", (64, 64), "blue").save(images / "y.jpg")
    config = PipelineConfig.model_validate(
        {
            "input": {"kind": "images", "uri": str(images)},
            "model": {"checkpoint": checkpoint, "mode": "i2t", "steps": 2},
            "output": {"uri": str(tmp_path / "out"), "formats": ["parquet", "webdataset"], "shard_size": 3},
            "resources": RESOURCES,
        }
    )
    report = run_pipeline(config, progress=False)
    found = outcome_keys(tmp_path / "out")
    assert_each_key_once(found, ["x", "x-000000000", "y"])
    assert found["errored"] == ["x"] and report.summary["errored"] == 1
    (reason,) = report.summary["error_reasons"]
    assert reason.startswith("read: read failed:") and "nowhere.png" in reason or "x.png" in reason
