"""The writers mark every generated image they write (parquet, tar, rejected rows), never an input image, and a
record whose image cannot carry its marks becomes an error row."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from test_writers import unit_frame

from pipelines import records as r
from pipelines.dedup.phash import phash
from pipelines.provenance.job_marks import JobMarks
from pipelines.writers.unit_writer import OutputSpec, write_unit
from unidiffuser.marks.marking import read_marks
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA

MARKS = JobMarks(
    job="marks-test",
    model_id="models/unidiffuser-shapes",
    model_version="abc123",
    steps=2,
    guidance_scale=7.5,
    cfg_mode="true_uncond",
    data_type=1,
    dtype="float32",
    software_version="0.1.0",
)


def _output(tmp_path: Path, fmt: str = "png") -> OutputSpec:
    return OutputSpec(uri=str(tmp_path), formats=("parquet", "webdataset"), image_format=fmt, marks=MARKS)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_every_written_and_rejected_image_carries_its_record(tmp_path: Path, fmt: str) -> None:
    batch = unit_frame(0, ["ok", "rejected", "ok", "error"])
    write_unit(batch, output=_output(tmp_path, fmt))
    rows = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    rows += pq.read_table(tmp_path / "rejected" / "00000.parquet").to_pylist()
    assert len(rows) == 3
    for row in rows:
        marks = read_marks(row[r.IMAGE])
        assert marks.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
        assert marks.record is not None
        assert (marks.record.key, marks.record.prompt, marks.record.seed, marks.record.mode) == (
            row[r.KEY],
            row[r.PROMPT],
            row[r.SEED],
            "t2i",
        )
        assert marks.record.model_version == "abc123" and marks.record.job == "marks-test"
        assert (marks.parameters is not None) == (fmt == "png")
        source = batch.set_index(r.KEY).loc[row[r.KEY], r.OUT_PIXELS]
        if fmt == "png":  # lossless: marking changed no pixel
            decoded = np.asarray(Image.open(io.BytesIO(row[r.IMAGE])).convert("RGB"))
            np.testing.assert_array_equal(decoded, source)
        assert row[r.PHASH] == phash(row[r.IMAGE])  # the pHash of the marked file as written
    tar = str(tmp_path / "webdataset" / "00000.tar")
    samples = list(wds.WebDataset(tar, shardshuffle=False, empty_check=False))
    assert len(samples) == 2
    for sample in samples:
        assert read_marks(sample[fmt]).record.key == json.loads(sample["json"])["key"]


def test_input_images_kept_as_source_are_not_marked(tmp_path: Path) -> None:
    batch = unit_frame(0, ["ok", "ok"], with_images=False)
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buffer, format="PNG")
    batch[r.SOURCE_IMAGE] = [buffer.getvalue()] * 2
    write_unit(batch, output=_output(tmp_path))
    rows = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    assert [row[r.IMAGE] for row in rows] == [buffer.getvalue()] * 2, "byte for byte"
    assert read_marks(rows[0][r.IMAGE]) is None


def test_an_image_that_cannot_carry_its_marks_is_an_error_row(tmp_path: Path) -> None:
    batch = unit_frame(0, ["ok", "ok"])
    batch.loc[1, r.PROMPT] = "word " * 20_000  # 100 KB of prompt: over JPEG's one 64 KiB XMP segment
    write_unit(batch, output=_output(tmp_path, "jpg"))
    written = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    errors = pq.read_table(tmp_path / "errors" / "00000.parquet").to_pylist()
    assert [row[r.KEY] for row in written] == [batch.loc[0, r.KEY]]
    assert [row[r.KEY] for row in errors] == [batch.loc[1, r.KEY]]
    assert (
        errors[0][r.REASON].startswith("provenance: record ") and "cannot mark image" in errors[0][r.REASON]
    )
    assert errors[0].get(r.IMAGE) is None, "no unmarked image is written anywhere"
    marker = json.loads((tmp_path / "_units" / "00000.json").read_text())
    assert (marker["written"], marker["errored"]) == (1, 1)


def test_a_job_without_marks_writes_unmarked_images(tmp_path: Path) -> None:
    write_unit(unit_frame(0, ["ok"]), output=replace(_output(tmp_path), marks=None))
    row = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()[0]
    assert read_marks(row[r.IMAGE]) is None


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (apt: libimage-exiftool-perl)")
@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_exiftool_reads_the_digital_source_type_of_written_images(tmp_path: Path, fmt: str) -> None:
    write_unit(unit_frame(0, ["ok"]), output=_output(tmp_path, fmt))
    image = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()[0][r.IMAGE]
    path = tmp_path / f"image.{fmt}"
    path.write_bytes(image)
    found = json.loads(
        subprocess.run(["exiftool", "-j", "-XMP:all", str(path)], check=True, capture_output=True).stdout
    )[0]
    assert found["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
