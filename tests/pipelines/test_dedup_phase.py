"""De-duplication through the whole pipeline: exact input duplicates before any model work, the near-duplicate
phase across units (idempotent, incremental), decontamination against a reference set on the loopback S3,
and bad references refused.

Planted duplicates: a generate stage that draws each record's image from its prompt's scene (``scene 3 copy
b`` and ``scene 3`` get the same pixels), so copies are exact (cosine 1) whatever the tiny CLIP makes of them;
the tiny CLIP puts distinct images as close as 0.997, so the tests use a threshold of 0.9999. How well the
default threshold separates real near-duplicates is measured by ``bench/dedup.py`` on the shapes model.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from stand_in_engines import SCENE, SceneEngine, scene_image, stage_with

from jobs.inspect_output import duplicate_groups, inspect_output
from jobs.validate import preflight
from pipelines.config import PipelineConfig
from pipelines.run import run_pipeline
from pipelines.stages.generate import GenerateStage
from unidiffuser import Result
from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

pytestmark = pytest.mark.usefixtures("ray_local")

RESOURCES = {"cpus_per_actor": 0.5, "clip_cpus_per_actor": 0.5, "writer_cpus": 0.5, "preprocess_cpus": 0.5}
THRESHOLD = 0.9999


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return str(write_tiny_checkpoint(root / "unidiffuser", version=1)), str(write_tiny_clip(root / "clip"))


def planted_stage(record_dir: str | None = None) -> type[GenerateStage]:
    """Generates each record's image from its prompt's scene (and notes how many records it was given)."""

    class PlantedStage(stage_with(SceneEngine())):
        def _results(self, rows: pd.DataFrame) -> list[Result]:
            if record_dir is not None:
                Path(record_dir, f"{int(rows['unit'].iloc[0]):05d}").write_text(str(len(rows)))
            return super()._results(rows)

    return PlantedStage


def make_config(models, prompts: Path, out: Path, **dedup) -> PipelineConfig:
    checkpoint, clip = models
    return PipelineConfig.model_validate(
        {
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {"checkpoint": checkpoint, "mode": "t2i", "steps": 1},
            "clip": {"enabled": True, "model": clip},
            "curation": {"dedup": {"threshold": THRESHOLD, **dedup}},
            "output": {"uri": str(out), "formats": ["parquet", "webdataset", "embeddings"], "shard_size": 2,
                       "image_format": "png"},
            "resources": RESOURCES,
        }
    )  # fmt: skip


def rows(out: Path, folder: str) -> dict[str, dict]:
    return {
        row["key"]: row
        for f in sorted((out / folder).glob("*.parquet"))
        for row in pq.read_table(f).to_pylist()
    }


def tree(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "_summary.json"
    }


def assert_accounted(out: Path, inputs: int) -> dict:
    summary = json.loads((out / "_summary.json").read_text())
    written, rejected, errors = rows(out, "parquet"), rows(out, "rejected"), rows(out, "errors")
    assert (summary["written"], summary["rejected"], summary["errored"]) == (
        len(written),
        len(rejected),
        len(errors),
    )
    assert summary["inputs"] == inputs == len(written) + len(rejected) + len(errors)
    assert not set(written) & set(rejected)
    import webdataset as wds

    in_tars = [json.loads(s["json"])["key"] for t in sorted((out / "webdataset").glob("*.tar"))
               for s in wds.WebDataset(str(t), shardshuffle=False, empty_check=False)]  # fmt: skip
    assert sorted(in_tars) == sorted(written), "the tars hold exactly the written records"
    meta = [m["key"] for f in sorted((out / "embeddings" / "metadata").glob("*.parquet"))
            for m in pq.read_table(f).to_pylist()]  # fmt: skip
    assert sorted(meta) == sorted(written)
    return summary


def pixels(data: bytes) -> np.ndarray:
    """The decoded image (files of the same pixels differ in their marks: key, prompt)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


PROMPTS = ["scene 0", "scene 1", "scene 0 copy b", "scene 2", "scene 1 copy b", "scene 3"]  # 3 units of 2


@pytest.mark.slow
def test_near_duplicates_across_units_are_rejected_idempotently_and_incrementally(models, tmp_path: Path):
    prompts = tmp_path / "in" / "a.txt"
    prompts.parent.mkdir()
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    config = make_config(models, prompts.parent, out, near_duplicates=True)
    report = run_pipeline(config, generate_cls=planted_stage(), progress=False)
    summary = assert_accounted(out, 6)
    written, rejected = rows(out, "parquet"), rows(out, "rejected")
    assert (
        summary["rejected_reasons"] == {"near-duplicate": 2}
        and report.summary["dedup"]["units_rewritten"] >= 1
    )
    scene = {key: SCENE.search(row["prompt"]).group(1) for key, row in {**written, **rejected}.items()}
    assert sorted(scene[k] for k in written) == ["0", "1", "2", "3"], "one record of each scene stays"
    for key, row in rejected.items():
        kept = re.fullmatch(r"near-duplicate of (\S+) \(cosine (1\.000|0\.9999)\)", row["reason"])
        assert kept and kept.group(1) in written and scene[kept.group(1)] == scene[key], row["reason"]
        assert row["clip_score"] <= written[kept.group(1)]["clip_score"], "the better-scoring record stays"
        assert pixels(row["image"]).tobytes() == pixels(written[kept.group(1)]["image"]).tobytes()
        assert row["rejected_by"] == ["near-duplicate"]
    manifest = pq.read_table(out / "dedup" / "removals.parquet").to_pylist()
    assert sorted((m["key"], m["kept_key"]) for m in manifest) == sorted(
        (k, re.match(r"near-duplicate of (\S+)", r["reason"]).group(1)) for k, r in rejected.items()
    )

    groups = duplicate_groups(str(out))  # what inspect shows: each group with its kept record first
    assert sorted(g[0]["key"] for g in groups) == sorted({m["kept_key"] for m in manifest})
    assert all(g[0]["key"] in written and all(d["key"] in rejected for d in g[1:]) for g in groups)
    report_text, _ = inspect_output(str(out))
    assert "near-duplicate groups: 2 shown in" in report_text and (out / "duplicates.png").is_file()
    (out / "duplicates.png").unlink()
    for sheet in out.glob("*.png"):
        sheet.unlink()

    before = tree(out)  # a second run over the same output changes nothing
    again = run_pipeline(config, generate_cls=planted_stage(), progress=False)
    assert not again.did_model_work and again.summary["dedup"]["units_compared"] == 0
    assert tree(out) == before

    (prompts.parent / "b.txt").write_text("scene 2 copy c\nscene 4\n")  # a new file sorting after: new units
    grown = run_pipeline(config, generate_cls=planted_stage(), progress=False)
    assert grown.units_run == 1 and grown.summary["dedup"]["units_compared"] == 1
    after = tree(out)
    assert {k: v for k, v in after.items() if k.startswith("parquet/") and "00003" not in k} == {
        k: v for k, v in before.items() if k.startswith("parquet/")
    }, "old units never change"
    new_rejected = rows(out, "rejected")
    assert new_rejected["b-000000000"]["reason"].startswith(f"near-duplicate of {_key_of(written, '2')} ")
    assert "b-000000001" in rows(out, "parquet")
    assert_accounted(out, 8)


def _key_of(written: dict[str, dict], scene: str) -> str:
    return next(k for k, row in written.items() if SCENE.search(row["prompt"]).group(1) == scene)


@pytest.mark.slow
def test_exact_input_duplicates_are_rejected_before_generation_and_stay_on_resume(models, tmp_path: Path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("scene 1\nscene 2\nScene   1\nscene 3\nscene 2\n")  # normalised: lines 2 and 4 repeat
    out = tmp_path / "out"
    record = tmp_path / "record"
    record.mkdir()
    config = make_config(models, prompts, out, exact_inputs=True)
    report = run_pipeline(config, generate_cls=planted_stage(str(record)), progress=False)
    rejected = rows(out, "rejected")
    assert {k: r["reason"] for k, r in rejected.items()} == {
        "p-000000002": "duplicate of input p-000000000",
        "p-000000004": "duplicate of input p-000000001",
    }
    assert all(r["image"] is None for r in rejected.values())
    assert report.summary["rejected_reasons"] == {"duplicate of input": 2}
    assert report.summary["input_duplicates"] == 2
    handed = sum(int(p.read_text()) for p in record.iterdir())  # the engine saw only the first copies
    assert handed == 3 and sorted(rows(out, "parquet")) == ["p-000000000", "p-000000001", "p-000000003"]
    assert not run_pipeline(config, generate_cls=planted_stage(), progress=False).did_model_work
    prompts.write_text("scene 9\nscene 2\nScene   1\nscene 3\nscene 2\n")  # the first copy of line 2 is gone
    redone = run_pipeline(config, generate_cls=planted_stage(), progress=False)
    assert redone.summary["units_redone"] == 3  # the file was rewritten: every unit of it
    reasons = {k: r["reason"] for k, r in rows(out, "rejected").items()}
    assert "p-000000002" in rows(out, "parquet") and set(reasons) == {"p-000000004"}, reasons
    assert_accounted(out, 5)


@pytest.mark.slow
def test_records_close_to_a_reference_set_on_s3_are_rejected(
    models, tmp_path: Path, s3_bucket, s3fs_storage_options
):
    from unidiffuser.clip_embedder import ClipEmbedder

    prompts = tmp_path / "p.txt"
    prompts.write_text("scene 5\nscene 6\nscene 7\n")
    # scene 6's picture stands for an evaluation image, embedded by the same CLIP class the score stage uses
    (evaluation,) = ClipEmbedder(models[1]).images([scene_image("scene 6")])
    reference = pa.table({"id": ["000000139"], "embedding": [evaluation.tolist()]})
    uri = f"s3://{s3_bucket}/evals/coco-val2017.parquet"
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    with fs.open(uri, "wb") as f:
        pq.write_table(reference, f)
    out = tmp_path / "clean"
    config = make_config(models, prompts, out, references=[{"name": "coco-val2017", "uri": uri}])
    assert preflight(config) == []  # the loopback S3 is reached through the AWS_ENDPOINT_URL the fixture set
    report = run_pipeline(config, generate_cls=planted_stage(), progress=False)
    (row,) = rows(out, "rejected").values()
    assert (
        row["key"] == "p-000000001" and row["reason"] == "near-duplicate of reference coco-val2017:000000139"
    )
    assert report.summary["rejected_reasons"] == {"near-duplicate of reference coco-val2017": 1}
    assert_accounted(out, 3)


@pytest.mark.slow
def test_bad_references_are_refused_before_work_and_a_lost_one_leaves_units_as_they_were(
    models, tmp_path: Path
):
    prompts = tmp_path / "p.txt"
    prompts.write_text("scene 1\nscene 2\n")
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": [[1.0] * 8]}), small)
    bad = make_config(models, prompts, tmp_path / "o1", references=[
        {"name": "wrong-size", "uri": str(small)},
        {"name": "missing", "uri": str(tmp_path / "nowhere.parquet")},
    ])  # fmt: skip
    problems = "\n".join(preflight(bad))
    assert "curation.dedup.references.0" in problems and "8" in problems and "16" in problems, problems
    assert "curation.dedup.references.1" in problems and "nowhere.parquet" in problems, problems
    with pytest.raises(ValueError, match="threshold"):
        make_config(models, prompts, tmp_path / "o2", threshold=1.5)

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": [[1.0] + [0.0] * 15]}), good)
    out = tmp_path / "o3"
    config = make_config(models, prompts, out, references=[{"name": "evals", "uri": str(good)}])
    run_pipeline(make_config(models, prompts, out), generate_cls=planted_stage(), progress=False)
    before = tree(out)
    good.unlink()  # the reference disappears between validate and the phase
    with pytest.raises(Exception, match="evals"):
        run_pipeline(config, generate_cls=planted_stage(), progress=False)
    assert {k: v for k, v in tree(out).items() if not k.startswith("_units")} == {
        k: v for k, v in before.items() if not k.startswith("_units")
    }, "a failed dedup phase leaves the committed units as they were"
