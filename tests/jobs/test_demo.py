"""README's first command: ``unidiffuser-batch demo`` on the committed shapes model, judged for meaning.

The demo inputs are new scenes of the shapes world (named by their ground truth) plus bad records; the
outputs must account for every input, and what was written must be right more often than a regression floor
(a little below what the committed model measured with the demo's settings)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

import jobs.demo
from jobs.demo import (
    BAD_PROMPTS,
    DEMO_EXTRAS,
    DEMO_IMAGES,
    DEMO_INPUTS,
    DEMO_PROMPTS,
    SHAPES_CHECKPOINT,
    DemoModelMissing,
    image_file_name,
    pairs_from_file_name,
    prepare_models,
    write_demo_inputs,
)
from shapes.detector import detect, matches
from shapes.world import ShapesWorld, parse_caption

from .conftest import cli

# measured on the committed checkpoint: 9 of 12 captions and 9 of 12 written t2i images right (2026-11-26)
CAPTION_FLOOR = 0.6
T2I_FLOOR = 0.6


def _table(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    return ds.dataset(files, format="parquet").to_table().to_pylist() if files else []


def test_shipped_demo_inputs_are_what_the_generator_writes(tmp_path: Path):
    write_demo_inputs(tmp_path)
    assert (tmp_path / "prompts.txt").read_text() == (DEMO_INPUTS / "prompts.txt").read_text()
    made = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert made == sorted(p.name for p in (DEMO_INPUTS / "images").glob("*.png"))
    for name in made:
        ours = np.asarray(Image.open(tmp_path / "images" / name))
        shipped = np.asarray(Image.open(DEMO_INPUTS / "images" / name))
        assert np.array_equal(ours, shipped), name
        assert matches(detect(shipped).pairs, pairs_from_file_name(name)), name


def test_file_names_carry_the_ground_truth():
    scene = ShapesWorld(0).scene(3, "heldout")
    name = image_file_name(7, scene)
    assert name.startswith("07-") and name.endswith(f"-on-{scene.background}.png")
    assert pairs_from_file_name(name) == scene.pairs


def test_demo_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert prepare_models("shapes", tmp_path) == (SHAPES_CHECKPOINT, SHAPES_CHECKPOINT / "clip")
    checkpoint, clip = prepare_models("tiny", tmp_path)
    assert (checkpoint / "model_index.json").is_file() and (clip / "config.json").is_file()
    monkeypatch.setattr(jobs.demo, "SHAPES_CHECKPOINT", tmp_path / "nowhere")
    with pytest.raises(DemoModelMissing, match="nowhere.*--model tiny"):
        prepare_models("shapes", tmp_path)


@pytest.mark.slow
def test_demo_runs_the_real_pipeline_on_the_trained_model(tmp_path: Path):
    proc = cli("demo", "--out", str(tmp_path), "--quiet", timeout=900)
    assert "contact sheet" in proc.stdout
    verified = [line for line in proc.stdout.splitlines() if " verify: " in line]
    assert len(verified) == 2 and all(line.endswith(": OK") for line in verified), verified

    # text to image: every prompt accounted for, the bad ones as errors with their reason
    t2i = tmp_path / "t2i"
    written, rejected, errors = (_table(t2i / d) for d in ("parquet", "rejected", "errors"))
    assert len(written) + len(rejected) + len(errors) == DEMO_PROMPTS + len(BAD_PROMPTS) + DEMO_EXTRAS
    assert len(errors) == len(BAD_PROMPTS) and all("empty prompt" in e["reason"] for e in errors)
    reasons = [row["reason"] for row in rejected]
    assert (
        sum(re.fullmatch(r"duplicate of input \S+-000000000", reason) is not None for reason in reasons) == 1
    ), reasons
    red = [row for row in rejected if "red square" in row["prompt"]]
    assert red and all("punsafe" in row["reason"] for row in red), "the red-square prompt's image is not safe"
    assert all(row["punsafe"] <= 0.5 and row["aesthetic"] is not None for row in written)
    assert written, "the CLIP filter rejected everything"
    right = 0
    for row in written:
        image = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
        right += matches(detect(image).pairs, parse_caption(row["prompt"]).pairs)
    assert right / len(written) >= T2I_FLOOR, f"{right}/{len(written)} generated images show their prompt"
    assert (t2i / "contact_sheet.png").is_file()

    # captioning: every image captioned (or rejected with its score); broken.jpg and notes.csv are errors
    captions = tmp_path / "captions"
    written, rejected, errors = (_table(captions / d) for d in ("parquet", "rejected", "errors"))
    assert len(written) + len(rejected) == DEMO_IMAGES + DEMO_EXTRAS
    by_name = {Path(row["source"]).name: row for row in rejected}
    assert by_name["12-yellow-diamond-and-cyan-triangle-on-black.png"]["reason"].startswith(
        "duplicate of input"
    )
    unsafe = by_name["13-purple-diamond-and-red-square-on-white.png"]
    assert "punsafe" in unsafe["reason"] and unsafe["generated_caption"] is None, "rejected before captioning"
    captioned = [row for row in written + rejected if row["text"]]
    assert sorted(Path(e["source"]).name for e in errors) == ["broken.jpg", "notes.csv"]
    right = sum(
        matches(parse_caption(row["text"]).pairs, pairs_from_file_name(Path(row["source"]).name))
        for row in captioned
    )
    assert right / len(captioned) >= CAPTION_FLOOR, (
        f"{right}/{len(captioned)} captions name the right objects"
    )
    assert (captions / "contact_sheet.png").is_file()
