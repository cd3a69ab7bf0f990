"""The dataset card: a Hugging Face dataset card (``huggingface_hub.DatasetCard`` parses it) whose data files are
the output's shards as written, so ``datasets.load_dataset(OUTPUT)`` reads the written records."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import DatasetCard
from test_writers import unit_frame

from pipelines.config import PipelineConfig
from pipelines.writers.dataset_card import CARD_FILE, edge_labels, score_histogram, write_dataset_card
from pipelines.writers.summary import RunWork, write_summary
from pipelines.writers.unit_writer import OutputSpec, write_unit


def _config(out: Path, **output: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "card-test",
            "input": {"kind": "prompts", "uri": str(out / "unused.txt")},
            "model": {"checkpoint": str(out / "unused-model"), "mode": "t2i", "model_id": "tiny-unidiffuser"},
            "output": {"uri": str(out), "formats": ["parquet", "webdataset"], **output},
        }
    )


@pytest.fixture
def output(tmp_path: Path) -> tuple[Path, dict]:
    spec = OutputSpec(str(tmp_path), formats=("parquet", "webdataset"))
    write_unit(unit_frame(0, ["ok", "rejected", "error", "ok"], seed=0), output=spec)
    write_unit(unit_frame(1, ["ok", "ok", "rejected"], seed=1), output=spec)
    summary = write_summary(str(tmp_path), inputs=7, config={}, run=RunWork(1.0, 2, 7), versions={"x": "1"})
    return tmp_path, summary


def test_the_card_parses_as_a_hugging_face_dataset_card(output: tuple[Path, dict]) -> None:
    out, summary = output
    write_dataset_card(_config(out, license="cc-by-4.0"), summary)
    card = DatasetCard.load(out / CARD_FILE)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and "synthetic" in data["tags"]
    assert data["task_categories"] == ["text-to-image"] and data["size_categories"] == ["n<1K"]
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "parquet/*.parquet"}]}
    ]
    text = card.text
    assert "| written | 4 |" in text and "| rejected | 2 |" in text and "| errored | 1 |" in text
    assert "| clip_score below 0.2 | 2 |" in text, "counts per reason"
    assert "### clip_score" in text, "a histogram of each score"
    assert "trainedAlgorithmicMedia" in text, "the provenance statement"


def test_load_dataset_reads_the_written_records_through_the_card(output: tuple[Path, dict]) -> None:
    out, summary = output
    write_dataset_card(_config(out), summary)
    train = datasets.load_dataset(str(out), split="train", cache_dir=str(out.parent / "hf-cache"))
    assert train.num_rows == 4
    assert sorted(train["key"]) == sorted(
        ["job.0/rec.000", "job.0/rec.003", "job.1/rec.000", "job.1/rec.001"]
    ), "written records only: never rejected/ or errors/"
    tars = datasets.load_dataset(  # the call the card shows for the tars
        "webdataset",
        data_files={"train": str(out / "webdataset" / "*.tar")},
        split="train",
        cache_dir=str(out.parent / "hf-cache"),
    )
    assert tars.num_rows == 4


def test_histogram_counts_are_those_of_the_written_scores(output: tuple[Path, dict]) -> None:
    out, summary = output
    text = write_dataset_card(_config(out), summary)
    section = text.split("### clip_score", 1)[1].split("##", 1)[0]
    counts = [
        int(line.split("|")[3])
        for line in section.splitlines()
        if line.startswith("| ") and "---" not in line and "from" not in line
    ]
    assert sum(counts) == 4


def test_edge_labels_stay_distinct_for_scores_near_zero() -> None:
    edges = np.histogram(np.array([1.2e-5, 3.0e-5, 8.1e-5]), bins=8)[1].tolist()
    labels = edge_labels(edges)
    assert len(set(labels)) == len(labels) == 9
    assert [float(label) for label in labels] == pytest.approx(edges, abs=1e-6)
    assert edge_labels([0.25, 0.5, 0.75]) == ["+0.250", "+0.500", "+0.750"]  # three places where they do


def test_histograms_count_the_finite_scores_only() -> None:
    """The card and ``inspect`` bin the same way: None, NaN and inf are left out, not a failure."""
    edges, counts = score_histogram([0.1, None, float("nan"), 0.3, float("inf"), 0.2], bins=2)
    assert counts == [1, 2] and edges == pytest.approx([0.1, 0.2, 0.3])
    assert score_histogram([None, float("nan"), float("-inf")], bins=4) is None
