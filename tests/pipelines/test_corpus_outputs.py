"""img2dataset corpora end to end (``run_pipeline``, mode ``i2t``, tiny checkpoint): its three layouts give the
same outputs under img2dataset's keys; a job output opens unchanged in Hugging Face ``datasets``' webdataset
loader and (through ``write_wids_index``) in ``wids.ShardListDataset``; a job output is planned from its markers
as the next job's input; resume keeps units across both ways of planning a tar."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from img2dataset_layouts import corpus, write_corpus

from pipelines.config import PipelineConfig
from pipelines.readers import plan_images
from pipelines.run import run_pipeline
from pipelines.writers.wids_index import write_wids_index
from unidiffuser.tiny import write_tiny_checkpoint

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # each module runs jobs

RESOURCES = {
    "cpus_per_actor": 0.5,
    "clip_cpus_per_actor": 0.5,
    "writer_cpus": 0.5,
    "preprocess_cpus": 0.5,
    "batch_size": 4,
}
LAYOUTS = ("webdataset", "files", "parquet")
URLS = corpus(10, failed={2, 5})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("models") / "unidiffuser", version=1))


def config(checkpoint: str, uri: str, out: Path, *, shard_size: int = 3) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "input": {"kind": "images", "uri": uri, "keep_fields": ["url"]},
            "model": {"checkpoint": checkpoint, "mode": "i2t", "steps": 2},
            "clip": {"enabled": False},
            "output": {"uri": str(out), "formats": ["parquet", "webdataset"], "shard_size": shard_size},
            "resources": RESOURCES,
        }
    )


@pytest.fixture(scope="module")
def outputs(checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The corpus written in each layout and captioned: layout -> output folder."""
    root = tmp_path_factory.mktemp("corpus")
    found = {}
    for layout in LAYOUTS:
        write_corpus(root / "in" / layout, URLS, layout=layout, per_shard=4)
        out = root / "out" / layout
        run_pipeline(config(checkpoint, str(root / "in" / layout), out), progress=False)
        found[layout] = out
    return found


def written(out: Path) -> list[dict]:
    return [row for f in sorted((out / "parquet").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def test_three_layouts_give_the_same_outputs_under_img2datasets_keys(outputs: dict[str, Path]) -> None:
    seen = {}
    for layout, out in outputs.items():
        summary = json.loads((out / "_summary.json").read_text())
        assert (summary["inputs"], summary["errored"]) == (8, 0), (
            layout
        )  # 8 downloads succeeded, none failed here
        rows = written(out)
        seen[layout] = {
            row["key"]: (row["source_caption"], json.loads(row["metadata"])["url"], row["generated_caption"])
            for row in rows
        }
    assert seen["webdataset"] == seen["files"] == seen["parquet"]  # same keys, captions, urls, model output
    keys = set(seen["parquet"])
    assert len(keys) == 8 and all(k.isdigit() and len(k) == 6 for k in keys)  # img2dataset's own keys
    for key, (caption, url, _) in seen["parquet"].items():
        index = int(url.rsplit("/", 1)[1].split(".")[0])
        assert caption == f"caption {index}" and int(key) == 10 * (index // 4) + index % 4  # shard, row


def test_a_job_output_opens_unchanged_in_hugging_face_and_wids(
    outputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids-cache"))
    out = outputs["webdataset"]
    rows = written(out)
    by_key = {row["key"]: row for row in rows}

    from datasets import load_dataset

    hf = load_dataset("webdataset", data_files=str(out / "webdataset" / "*.tar"), split="train")
    assert sorted(hf["__key__"]) == sorted(by_key)  # keys join: no dot split them
    for sample in hf:
        assert sample["txt"] == by_key[sample["__key__"]]["text"]
        assert sample["json"]["key"] == sample["__key__"]

    index_uri = write_wids_index(str(out))
    index = json.loads((out / "wids_index.json").read_text())
    assert index_uri.endswith("wids_index.json") and index["__kind__"] == "wids-shard-index-v1"
    assert [s["url"] for s in index["shardlist"]] == [
        f"webdataset/{p.name}" for p in sorted((out / "webdataset").glob("*.tar"))
    ]
    assert sum(s["nsamples"] for s in index["shardlist"]) == len(rows)
    wids = pytest.importorskip("wids")
    dataset = wids.ShardListDataset(str(out / "wids_index.json"), transformations=[])
    assert len(dataset) == len(rows)
    for i in range(len(dataset)):  # random access, in shard order: the parquet rows' order
        sample = dataset[i]
        assert sample["__key__"] == rows[i]["key"]
        text = sample[".txt"]
        assert (text.read() if hasattr(text, "read") else text).decode() == rows[i]["text"]


def test_a_job_output_is_planned_from_its_markers(outputs: dict[str, Path]) -> None:
    out = outputs["files"]
    rows = written(out)
    for uri in (out, out / "webdataset"):
        planned = plan_images(str(uri), unit_size=2)
        formats = {type(s.source.format).__name__ for u in planned.units for s in u.segments}
        assert formats == {"IndexedTar"} and planned.num_records == len(rows)
        read = [r for t in ray.get(planned.to_dataset().to_arrow_refs()) for r in t.to_pylist()]
        assert [r["key"] for r in read] == [row["key"] for row in rows]  # the output's keys, in order
        assert all(
            r["read_error"] is None and r["prompt"] == row["text"] for r, row in zip(read, rows, strict=True)
        )
    parquet_only = plan_images(str(out / "parquet"), unit_size=2)
    assert {type(s.source.format).__name__ for u in parquet_only.units for s in u.segments} == {
        "Img2datasetParquet"
    }
    assert parquet_only.num_records == len(rows)


def test_resume_keeps_units_across_both_ways_of_planning(checkpoint: str, tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", URLS, layout="webdataset", per_shard=4)
    first = run_pipeline(config(checkpoint, str(tmp_path / "in"), tmp_path / "out"), progress=False)
    assert first.units_run == first.units_total == 3
    for metadata in (tmp_path / "in").glob("*.parquet"):
        metadata.unlink()  # the next plan scans the tars
    again = run_pipeline(config(checkpoint, str(tmp_path / "in"), tmp_path / "out"), progress=False)
    assert again.units_run == 0 and again.units_skipped == 3  # same units, keys and input hashes
    shutil.rmtree(tmp_path / "in")
