"""Curation through the whole pipeline: score heads on every output, their bounds (output and input side), a
prompt blocklist, non-finite scores, a changed head redoing units, and bad configurations refused up front.

The heads are small linear heads written by the tests in the generic format (``save_mlp_head``) over the tiny
CLIP's 16-d image embedding, with weights chosen so that each score is a known function of the embedding the
shards carry: the tests recompute every score from the written ``img_emb``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jobs.validate import preflight
from pipelines.config import PipelineConfig
from pipelines.heads.mlp import MLPHeadConfig, save_mlp_head
from pipelines.run import run_pipeline
from pipelines.stages.generate import GenerateStage
from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

pytestmark = pytest.mark.usefixtures("ray_local")

DIM = 16  # the tiny CLIP's projection size
# 2 CPUs: the engine, two judge pools (input and output heads), the writer and one preprocess task
RESOURCES = {"cpus_per_actor": 0.5, "clip_cpus_per_actor": 0.25, "writer_cpus": 0.5, "preprocess_cpus": 0.5}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return str(write_tiny_checkpoint(root / "unidiffuser", version=1)), str(write_tiny_clip(root / "clip"))


def linear_head(
    folder: Path, *, weight: float, bias: float, output: str = "regression", dim: int = DIM
) -> Path:
    """A head scoring ``weight * e[0] + bias`` (``output='probability'``: its sigmoid) of embedding ``e``."""
    w = torch.zeros(1, dim)
    w[0, 0] = weight
    config = MLPHeadConfig(input_dim=dim, hidden=[], output=output, normalize_input=True)
    return save_mlp_head(folder, config, {"layers.0.weight": w, "layers.0.bias": torch.tensor([bias])})


def head_score(embedding: list[float], *, weight: float, bias: float, output: str = "regression") -> float:
    e = np.asarray(embedding, np.float64)
    value = weight * e[0] / np.linalg.norm(e) + bias
    return 1 / (1 + math.exp(-value)) if output == "probability" else value


def make_config(models, tmp_path: Path, *, mode: str = "t2i", heads: list[dict], **extra) -> PipelineConfig:
    checkpoint, clip = models
    if mode == "t2i":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("".join(f"a shape number {i}\n" for i in range(8)) + "a knife on a table\n")
        source = {"kind": "prompts", "uri": str(prompts)}
    else:
        from PIL import Image

        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        source = {"kind": "images", "uri": str(folder)}
    return PipelineConfig.model_validate(
        {
            "input": source,
            "model": {"checkpoint": checkpoint, "mode": mode, "steps": 2},
            "clip": {"enabled": True, "model": clip},
            "curation": {"heads": heads, **extra},
            "output": {"uri": str(tmp_path / "out"), "formats": ["parquet", "webdataset", "embeddings"],
                       "shard_size": 3},
            "resources": RESOURCES,
        }
    )  # fmt: skip


def read(out: Path, folder: str) -> list[dict]:
    return [row for f in sorted((out / folder).glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def counting_stage(record_dir: str) -> type[GenerateStage]:
    """A GenerateStage that notes how many records each call hands the engine."""

    class CountingStage(GenerateStage):
        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            ok = int((batch["status"] == "ok").sum())
            Path(record_dir, f"{int(batch['unit'].iloc[0]):05d}").write_text(str(ok))
            return super().__call__(batch)

    return CountingStage


@pytest.mark.slow
def test_head_scores_reach_every_output_and_their_bounds_reject_with_every_reason(models, tmp_path: Path):
    """Two heads and a prompt blocklist on one job; then one head's weights change and its units are redone.
    A head named ``unsafe`` writes LAION's ``punsafe`` column by default."""
    aesthetic = linear_head(tmp_path / "heads" / "aesthetic", weight=10.0, bias=5.0)
    unsafe = linear_head(tmp_path / "heads" / "unsafe", weight=-6.0, bias=0.0, output="probability")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# weapons\nknife\n/\\bgun(s)?\\b/\n")
    config = make_config(models, tmp_path, heads=[
        {"name": "aesthetic", "kind": "mlp", "uri": str(aesthetic), "min": 5.0},
        {"name": "unsafe", "kind": "mlp", "uri": str(unsafe), "max": 0.5},
    ], blocklist=str(blocklist))  # fmt: skip
    record = tmp_path / "record"
    record.mkdir()
    report = run_pipeline(config, generate_cls=counting_stage(str(record)), progress=False)
    out = tmp_path / "out"
    written, rejected = read(out, "parquet"), read(out, "rejected")
    assert len(written) + len(rejected) + report.summary["errored"] == 9

    # the blocklisted prompt is rejected before generation: the engine saw only the 8 others
    (blocked,) = [r for r in rejected if r["prompt"] == "a knife on a table"]
    assert blocked["reason"] == "prompt matches blocklist entry 'knife'" and blocked["image"] is None
    assert sum(int(p.read_text()) for p in record.iterdir()) == 8
    judged = [r for r in rejected if r is not blocked]

    for row in written:  # every score is the head's function of the embedding written
        emb = row["img_emb"]
        assert row["aesthetic"] == pytest.approx(head_score(emb, weight=10.0, bias=5.0), abs=1e-4)
        assert row["punsafe"] == pytest.approx(
            head_score(emb, weight=-6.0, bias=0.0, output="probability"), abs=1e-4
        )
    for row in written + judged:  # both heads read the same e[0]: their scores agree with each other
        x = (row["aesthetic"] - 5.0) / 10.0
        assert row["punsafe"] == pytest.approx(1 / (1 + math.exp(6.0 * x)), abs=1e-4)
    for row in written:
        assert row["aesthetic"] >= 5.0 and row["punsafe"] <= 0.5
    assert judged, "the bounds must reject something on random embeddings"
    for row in judged:  # e[0] < 0 fails both bounds at once: the reason names both, with values
        assert row["aesthetic"] < 5.0 and row["punsafe"] > 0.5
        assert (
            row["reason"]
            == f"aesthetic {row['aesthetic']:.3g} < min 5.0; punsafe {row['punsafe']:.3g} > max 0.5"
        )
        assert row["rejected_by"] == ["aesthetic < min 5.0", "punsafe > max 0.5"]
    counts = report.summary["rejected_reasons"]
    assert counts == {
        "aesthetic < min 5.0": len(judged),
        "punsafe > max 0.5": len(judged),
        "prompt blocklist": 1,
    }
    # the tar json and the clip-retrieval metadata carry the scores too
    import webdataset as wds

    samples = [json.loads(s["json"]) for t in sorted((out / "webdataset").glob("*.tar"))
               for s in wds.WebDataset(str(t), shardshuffle=False, empty_check=False)]  # fmt: skip
    assert {s["key"]: s["aesthetic"] for s in samples} == {r["key"]: r["aesthetic"] for r in written}
    meta = read(out, "embeddings/metadata")
    assert {m["key"]: m["punsafe"] for m in meta} == {r["key"]: r["punsafe"] for r in written}

    # a head is pinned by its identity: the same job does nothing, new weights in its folder redo every unit
    assert not run_pipeline(config, progress=False).did_model_work
    linear_head(aesthetic, weight=10.0, bias=4.0)
    again = run_pipeline(config, progress=False)
    assert again.units_run == report.units_total and again.summary["units_redone"] == report.units_total
    for row in read(out, "parquet"):
        assert row["aesthetic"] == pytest.approx(head_score(row["img_emb"], weight=10.0, bias=4.0), abs=1e-4)


@pytest.mark.slow
def test_input_heads_reject_captioning_inputs_before_any_model_work(models, tmp_path: Path):
    unsafe = linear_head(tmp_path / "heads" / "unsafe", weight=8.0, bias=0.0, output="probability")
    config = make_config(
        models,
        tmp_path,
        mode="i2t",
        heads=[
            {"name": "unsafe", "kind": "mlp", "uri": str(unsafe), "max": 0.32, "applies_to": "input"},
        ],
    )  # fmt: skip  (the tiny CLIP scores these noise images 0.25 .. 0.38: some pass, some not)
    record = tmp_path / "record"
    record.mkdir()
    report = run_pipeline(config, generate_cls=counting_stage(str(record)), progress=False)
    rejected = read(tmp_path / "out", "rejected")
    assert rejected and all(r["reason"].startswith("punsafe ") and r["punsafe"] > 0.32 for r in rejected)
    assert all(r["generated_caption"] is None for r in rejected)  # never captioned
    seen = sum(int(p.read_text()) for p in record.iterdir())
    assert seen == 8 - len(rejected) == report.summary["written"]  # the engine saw only the kept inputs
    assert all(r["punsafe"] <= 0.32 for r in read(tmp_path / "out", "parquet"))


@pytest.mark.slow
def test_a_non_finite_score_makes_an_error_row(models, tmp_path: Path):
    broken = linear_head(tmp_path / "heads" / "aesthetic", weight=float("nan"), bias=0.0)
    config = make_config(models, tmp_path, heads=[{"name": "aesthetic", "kind": "mlp", "uri": str(broken)}])
    report = run_pipeline(config, progress=False)
    assert (report.summary["written"], report.summary["errored"]) == (0, 9)
    assert set(report.summary["error_reasons"]) == {"aesthetic score is nan (not a finite number)"}
    assert all(r["aesthetic"] is None for r in read(tmp_path / "out", "errors"))  # a NaN is written as null


def test_bad_curation_settings_are_refused_before_any_work(models, tmp_path: Path):
    wrong_size = linear_head(tmp_path / "heads" / "big", weight=1.0, bias=0.0, dim=768)
    config = make_config(models, tmp_path, heads=[
        {"name": "aesthetic", "kind": "mlp", "uri": str(wrong_size)},
        {"name": "gone", "kind": "mlp", "uri": str(tmp_path / "no-such-head")},
    ], blocklist=str(tmp_path / "no-blocklist.txt"))  # fmt: skip
    problems = "\n".join(preflight(config))
    assert "curation.heads.0.uri" in problems and "size 768" in problems and "size is 16" in problems
    assert "curation.heads.1.uri" in problems and "no-such-head" in problems
    assert "curation.blocklist: cannot read" in problems
    (tmp_path / "bad.txt").write_text("/unclosed(/\n")
    bad_regex = make_config(models, tmp_path, heads=[], blocklist=str(tmp_path / "bad.txt"))
    assert "line 1: invalid regular expression" in "\n".join(preflight(bad_regex))
    with pytest.raises(ValueError, match="need clip.enabled"):
        PipelineConfig.model_validate({**config.model_dump(mode="json"), "clip": {"enabled": False}})
    with pytest.raises(ValueError, match="judge input images"):
        make_config(models, tmp_path, heads=[
            {"name": "aesthetic", "kind": "mlp", "uri": str(wrong_size), "applies_to": "input"}])  # fmt: skip
    with pytest.raises(ValueError, match="column 'clip_score' is a column of ours"):
        make_config(models, tmp_path, heads=[
            {"name": "x", "kind": "mlp", "uri": str(wrong_size), "column": "clip_score"}])  # fmt: skip
