"""Writers: every output format's contents, rejected/errors files, commit markers, summary and accounting."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image

from pipelines import records as r
from pipelines import storage
from pipelines.dedup.phash import phash
from pipelines.pixels import to_bytes
from pipelines.readers import read_count
from pipelines.stages.write import write_batch
from pipelines.writers import commit, unit_writer
from pipelines.writers.encode import encode_image, image_format, source_image
from pipelines.writers.summary import AccountingError, RunWork, outcome_line, redact, write_summary
from pipelines.writers.unit_writer import OutputSpec, retire_unit, write_unit

ALL_FORMATS = ("parquet", "webdataset", "embeddings")
DIM = 8


def unit_frame(unit: int, statuses: list[str], *, with_images: bool = True, seed: int = 0) -> pd.DataFrame:
    """A unit as the filter stage hands it to the writer."""
    rng = np.random.default_rng(seed)

    def emb() -> np.ndarray:
        v = rng.normal(size=DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    rows = []
    for i, status in enumerate(statuses):
        has_output = status != "error"
        rows.append(
            {
                r.KEY: f"job.{unit}/rec.{i:03d}",  # dots and slashes: webdataset names must be made safe
                r.INPUT_KEY: f"job.{unit}/rec.{i:03d}",
                r.SAMPLE: 0,
                r.METADATA: json.dumps({"id": i, "url": None}),
                r.SOURCE: "file:///in/prompts.txt",
                r.UNIT: unit,
                r.MODE: "t2i" if with_images else "i2t",
                r.PROMPT: f"prompt {i}",
                r.TEXT: f"prompt {i}" if with_images else f"caption {i}",
                r.GENERATED_CAPTION: None if with_images else f"caption {i}",
                r.SEED: 1000 + i,
                r.OUT_PIXELS: (
                    rng.integers(0, 256, size=(16 + i, 24, 3), dtype=np.uint8)
                    if has_output and with_images
                    else None
                ),
                r.CLIP_SCORE: 0.1 + i / 100 if has_output else float("nan"),
                r.IMAGE_EMBEDDING: emb() if has_output and with_images else None,
                r.TEXT_EMBEDDING: emb() if has_output else None,
                r.STATUS: status,
                r.REASON: {"rejected": "clip_score below 0.2", "error": "generate: out of memory"}.get(
                    status
                ),
                r.MODEL_ID: "tiny-unidiffuser",
                r.PARAMS: json.dumps({"steps": 2, "cfg": 7.5}),
            }
        )
    return pd.DataFrame(rows)


def read_file(root: Path, relpath: str) -> bytes:
    return (root / relpath).read_bytes()


# --- encode --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("jpg", "JPEG"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
)
def test_encode_formats_decode_with_pil(fmt: str, pil_format: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    encoded = encode_image(pixels, fmt, quality=90)
    decoded = Image.open(io.BytesIO(encoded.data))
    assert decoded.format == pil_format
    assert decoded.size == (14, 10) and (encoded.width, encoded.height) == (14, 10)
    assert encoded.format == image_format(fmt)
    if fmt == "png":
        assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
        assert np.array_equal(encoded.pixels, pixels)  # what the file decodes to, known without decoding it
    else:
        assert encoded.pixels is None  # lossy: only a decode tells


def test_encode_quality_changes_jpeg_size_and_rejects_bad_arrays() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert len(encode_image(pixels, "jpg", 20).data) < len(encode_image(pixels, "jpg", 95).data)
    with pytest.raises(ValueError):
        encode_image(pixels.astype(np.float32), "jpg")
    with pytest.raises(ValueError):
        encode_image(pixels[..., :2], "png")
    with pytest.raises(ValueError):
        image_format("gif")


def _file(fmt: str, size: tuple[int, int] = (30, 20), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (40, 90, 200, 255)[: len(mode)] if mode != "P" else 3).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_source_image_keeps_shard_formats_byte_for_byte(fmt: str, ext: str) -> None:
    data = _file(fmt)
    kept = source_image(data, "png")
    assert (kept.data, kept.format, kept.width, kept.height) == (data, ext, 30, 20)


def test_source_image_reencodes_other_formats_at_their_own_size() -> None:
    for fmt, mode in (("BMP", "RGB"), ("GIF", "P"), ("TIFF", "RGBA")):
        kept = source_image(_file(fmt, (33, 17), mode), "webp", quality=90)
        decoded = Image.open(io.BytesIO(kept.data))
        assert (decoded.format, decoded.size, decoded.mode) == ("WEBP", (33, 17), "RGB"), fmt
        assert (kept.format, kept.width, kept.height) == ("webp", 33, 17)


@pytest.mark.parametrize("caption_image", ["source", "model_input", "none"])
def test_i2t_rows_are_written_with_the_chosen_image(tmp_path: Path, caption_image: str) -> None:
    """The write stage as the pipeline calls it: i2t rows carry their prepared model input (what they were
    scored on) and, when preprocess kept it, the input file; ``caption_image`` picks what goes in the shards."""
    frame = unit_frame(0, ["ok", "rejected", "error"], with_images=False)
    model_input = np.full((8, 8, 3), 77, np.uint8)
    sources = [_file("PNG", (50, 40)), _file("JPEG", (20, 60)), None]
    frame[r.PIXELS] = [to_bytes(model_input), to_bytes(model_input), None]
    frame[r.SOURCE_IMAGE] = sources if caption_image == "source" else [None] * 3
    write_batch(frame, output=OutputSpec(str(tmp_path), formats=ALL_FORMATS), caption_image=caption_image)
    written = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    rejected = pq.read_table(tmp_path / "rejected" / "00000.parquet").to_pylist()
    sample = next(iter(wds.WebDataset(str(tmp_path / "webdataset" / "00000.tar"), shardshuffle=False)))
    if caption_image == "source":
        assert (written[0]["image"], written[0]["image_format"], written[0]["width"]) == (
            sources[0],
            "png",
            50,
        )
        assert (rejected[0]["image"], rejected[0]["image_format"]) == (sources[1], "jpg")
        assert sample["png"] == sources[0]
    elif caption_image == "model_input":
        assert (written[0]["width"], written[0]["height"], written[0]["image_format"]) == (8, 8, "jpg")
        assert Image.open(io.BytesIO(sample["jpg"])).size == (8, 8)
    else:
        assert written[0]["image"] is None and rejected[0]["image"] is None
        assert sorted(k for k in sample if not k.startswith("__")) == ["json", "txt"]


# --- one unit, every format ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_write_unit_all_formats(tmp_path: Path) -> None:
    frame = unit_frame(7, ["ok", "rejected", "ok", "error", "ok"])
    marker = write_unit(frame, output=OutputSpec(str(tmp_path), formats=ALL_FORMATS, image_format="png"))
    assert (marker.records, marker.written, marker.rejected, marker.errored) == (5, 3, 1, 1)
    assert marker.reasons == {"clip_score below 0.2": 1, "generate: out of memory": 1}
    assert marker.rejected_reasons == {"clip_score below 0.2": 1}
    assert marker.error_reasons == {"generate: out of memory": 1}
    ok = frame[frame[r.STATUS] == "ok"].reset_index(drop=True)

    # parquet shard
    table = pq.read_table(tmp_path / "parquet" / "00007.parquet")
    assert table.column_names == [
        "key", "input_key", "sample", "source", "mode", "prompt", "source_caption", "generated_caption", "text",
        "prompt_used", "flags", "synthetic", "image", "image_format", "width", "height", "phash", "clip_score",
        "seed", "model_id",
        "params", "metadata", "img_emb", "text_emb",
    ]  # fmt: skip
    shard = table.to_pylist()
    assert [row["key"] for row in shard] == list(ok[r.KEY])
    for row, (_, expected) in zip(shard, ok.iterrows(), strict=True):
        image = Image.open(io.BytesIO(row["image"]))
        assert image.format == "PNG" and row["image_format"] == "png"
        assert np.array_equal(np.asarray(image), expected[r.OUT_PIXELS])  # png is lossless
        assert row["phash"] == phash(row["image"])  # hashed from its pixels, the same as from the file
        assert (row["width"], row["height"]) == (24, expected[r.OUT_PIXELS].shape[0])
        assert row["seed"] == expected[r.SEED] and row["clip_score"] == pytest.approx(expected[r.CLIP_SCORE])
        assert json.loads(row["params"]) == {"steps": 2, "cfg": 7.5}
        assert row["metadata"] == expected[r.METADATA]
        assert np.allclose(row["img_emb"], expected[r.IMAGE_EMBEDDING])
        assert np.allclose(row["text_emb"], expected[r.TEXT_EMBEDDING])

    # webdataset shard, read by webdataset and by Ray Data
    tar_path = tmp_path / "webdataset" / "00007.tar"
    samples = list(wds.WebDataset(str(tar_path), shardshuffle=False))
    assert len(samples) == 3
    for sample, (_, expected) in zip(samples, ok.iterrows(), strict=True):
        assert set(sample) >= {"__key__", "png", "txt", "json"}
        assert "." not in sample["__key__"].rsplit("/", 1)[-1]
        meta = json.loads(sample["json"])
        assert meta["key"] == meta["input_key"] == expected[r.KEY] and meta["sample"] == 0
        assert meta["metadata"] == json.loads(expected[r.METADATA])  # embedded as an object
        assert meta["id"] == json.loads(expected[r.METADATA])["id"]  # and the input's fields at the top level
        assert meta["seed"] == expected[r.SEED] and meta["prompt"] == expected[r.PROMPT]
        assert meta["params"] == {"steps": 2, "cfg": 7.5} and meta["mode"] == "t2i"
        assert meta["clip_score"] == pytest.approx(expected[r.CLIP_SCORE])
        assert (meta["width"], meta["height"]) == (24, expected[r.OUT_PIXELS].shape[0])
        assert sample["txt"].decode() == expected[r.TEXT]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), expected[r.OUT_PIXELS])
    ray_rows = ray.data.read_webdataset(str(tar_path), decoder=None).take_all()
    assert sorted(json.loads(row["json"])["key"] for row in ray_rows) == sorted(ok[r.KEY])
    assert all(Image.open(io.BytesIO(row["png"])).size[0] == 24 for row in ray_rows)

    stats = json.loads(read_file(tmp_path, "stats/00007_stats.json"))
    assert (stats["count"], stats["successes"], stats["failed_to_process"], stats["rejected"]) == (5, 3, 1, 1)
    assert (stats["failed_to_download"], stats["failed_to_resize"]) == (0, 0)
    assert stats["status_dict"]["success"] == 3 and stats["start_time"] <= stats["end_time"]

    # embeddings: aligned with metadata rows, image_path points into the tar
    img = np.load(tmp_path / "embeddings" / "img_emb" / "img_emb_00007.npy")
    text = np.load(tmp_path / "embeddings" / "text_emb" / "text_emb_00007.npy")
    meta = pq.read_table(tmp_path / "embeddings" / "metadata" / "metadata_00007.parquet").to_pylist()
    assert img.dtype == np.float32 and img.shape == (3, DIM) and text.shape == (3, DIM)
    assert [m["key"] for m in meta] == list(ok[r.KEY])
    assert [m["caption"] for m in meta] == list(ok[r.TEXT])
    for i, m in enumerate(meta):
        assert np.allclose(img[i], ok[r.IMAGE_EMBEDDING][i]) and np.allclose(text[i], ok[r.TEXT_EMBEDDING][i])
        folder, tar_name, member = m["image_path"].split("/", 2)
        assert (folder, tar_name) == ("webdataset", "00007.tar")
        with tarfile.open(tar_path) as tar:
            assert json.loads(tar.extractfile(member.rsplit(".", 1)[0] + ".json").read())["key"] == m["key"]

    # rejected keeps the image to look at; errors keep the reason
    rejected = pq.read_table(tmp_path / "rejected" / "00007.parquet").to_pylist()
    assert [(row["key"], row["reason"]) for row in rejected] == [(frame[r.KEY][1], "clip_score below 0.2")]
    assert Image.open(io.BytesIO(rejected[0]["image"])).size == (24, 17)
    assert rejected[0]["text"] == "prompt 1" and rejected[0]["clip_score"] == pytest.approx(0.11)
    # ... and every column of a shard, the reason and its rules right after the scores
    shard_columns = table.column_names
    at = shard_columns.index("clip_score") + 1
    assert pq.read_schema(tmp_path / "rejected" / "00007.parquet").names == [
        *shard_columns[:at],
        "reason",
        "rejected_by",
        *shard_columns[at:],
    ]
    assert json.loads(rejected[0]["params"]) == {"steps": 2, "cfg": 7.5}
    assert (rejected[0]["seed"], rejected[0]["model_id"]) == (1001, "tiny-unidiffuser")
    assert np.allclose(rejected[0]["img_emb"], frame[r.IMAGE_EMBEDDING][1])
    assert np.allclose(rejected[0]["text_emb"], frame[r.TEXT_EMBEDDING][1])
    errors = pq.read_table(tmp_path / "errors" / "00007.parquet").to_pylist()
    assert [(row["key"], row["prompt"], row["reason"]) for row in errors] == [
        (frame[r.KEY][3], "prompt 3", "generate: out of memory")
    ]

    # the marker is last and lists every file
    assert commit.committed_units(str(tmp_path)) == {7: marker}
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert sorted(marker.files) == [p for p in on_disk if p != "_units/00007.json"]


def test_text_only_outputs(tmp_path: Path) -> None:
    frame = unit_frame(0, ["ok", "ok", "error"], with_images=False)
    marker = write_unit(frame, output=OutputSpec(str(tmp_path), formats=ALL_FORMATS))
    shard = pq.read_table(tmp_path / "parquet" / "00000.parquet").to_pylist()
    assert [row["generated_caption"] for row in shard] == ["caption 0", "caption 1"]
    assert [row["source_caption"] for row in shard] == ["prompt 0", "prompt 1"]  # i2t: the input's caption
    assert all(row["prompt"] is None for row in shard)
    assert all(row["image"] is None and row["width"] is None and row["img_emb"] is None for row in shard)
    samples = list(wds.WebDataset(str(tmp_path / "webdataset" / "00000.tar"), shardshuffle=False))
    assert [sorted(k for k in s if not k.startswith("__")) for s in samples] == [
        ["json", "txt"],
        ["json", "txt"],
    ]
    assert not (tmp_path / "embeddings" / "img_emb").exists()
    assert np.load(tmp_path / "embeddings" / "text_emb" / "text_emb_00000.npy").shape == (2, DIM)
    meta = pq.read_table(tmp_path / "embeddings" / "metadata" / "metadata_00000.parquet").to_pylist()
    assert [m["image_path"] for m in meta] == list(frame[r.KEY][:2])
    assert marker.written == 2 and marker.errored == 1
    assert not (tmp_path / "rejected").exists()


def test_selected_formats_only(tmp_path: Path) -> None:
    write_unit(
        unit_frame(2, ["ok"]), output=OutputSpec(str(tmp_path), formats=("webdataset",), image_format="webp")
    )
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "_units/00002.json",
        "_units/00002.keys",
        "stats/00002_stats.json",
        "webdataset/00002.tar",
    ]
    (sample,) = list(wds.WebDataset(str(tmp_path / "webdataset" / "00002.tar"), shardshuffle=False))
    assert Image.open(io.BytesIO(sample["webp"])).format == "WEBP"
    with pytest.raises(ValueError):
        OutputSpec(str(tmp_path), formats=("csv",))


def test_status_less_rows_are_errors_and_batches_must_be_one_unit(tmp_path: Path) -> None:
    frame = unit_frame(0, ["ok", "ok"])
    frame[r.READ_ERROR] = [None, "not an image file: x.md"]
    frame.loc[1, r.STATUS] = None
    marker = write_unit(frame, output=OutputSpec(str(tmp_path)))
    assert marker.error_reasons == {"not an image file: x.md": 1}
    two_units = pd.concat([unit_frame(0, ["ok"]), unit_frame(1, ["ok"])])
    with pytest.raises(ValueError, match="exactly one unit"):
        write_unit(two_units, output=OutputSpec(str(tmp_path)))
    with pytest.raises(ValueError, match="empty"):
        write_unit(unit_frame(0, ["ok"]).iloc[:0], output=OutputSpec(str(tmp_path)))


def test_partly_missing_embeddings_become_zero_rows(tmp_path: Path) -> None:
    frame = unit_frame(4, ["ok", "ok"])
    frame.at[1, r.TEXT_EMBEDDING] = None  # e.g. an image whose source had no caption
    write_unit(frame, output=OutputSpec(str(tmp_path), formats=("embeddings",)))
    text = np.load(tmp_path / "embeddings" / "text_emb" / "text_emb_00004.npy")
    meta = pq.read_table(tmp_path / "embeddings" / "metadata" / "metadata_00004.parquet").to_pylist()
    assert text.shape[0] == len(meta) == 2  # still aligned with the metadata rows
    assert np.isclose(np.linalg.norm(text[0]), 1.0, atol=1e-4) and not text[1].any()
    assert sorted(commit.committed_units(str(tmp_path))) == [4]


def test_embeddings_of_different_sizes_raise_before_commit(tmp_path: Path) -> None:
    frame = unit_frame(4, ["ok", "ok"])
    frame.at[1, r.IMAGE_EMBEDDING] = [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="dimensions differ"):
        write_unit(frame, output=OutputSpec(str(tmp_path), formats=("embeddings",)))
    assert commit.committed_units(str(tmp_path)) == {}


# --- commit, idempotence, crash safety -----------------------------------------------------------------------


def test_committed_units_lists_markers(tmp_path: Path) -> None:
    assert commit.committed_units(str(tmp_path / "nothing-yet")) == {}
    spec = OutputSpec(str(tmp_path))
    for unit in (0, 2, 11):
        write_unit(unit_frame(unit, ["ok", "rejected"]), output=spec)
    (tmp_path / "_units" / "notes.txt").write_text("ignored")
    found = commit.committed_units(f"file://{tmp_path}")
    assert sorted(found) == [0, 2, 11]
    assert found[11].records == 2 and found[11].rejected == 1


def test_rewrite_is_idempotent_and_removes_stale_files(tmp_path: Path) -> None:
    spec = OutputSpec(str(tmp_path), formats=ALL_FORMATS)
    write_unit(unit_frame(3, ["ok", "rejected", "error"], seed=1), output=spec)
    assert (tmp_path / "rejected" / "00003.parquet").exists() and (
        tmp_path / "errors" / "00003.parquet"
    ).exists()
    marker = write_unit(unit_frame(3, ["ok", "ok", "ok"], seed=2), output=spec)
    assert not (tmp_path / "rejected" / "00003.parquet").exists()
    assert not (tmp_path / "errors" / "00003.parquet").exists()
    assert commit.committed_units(str(tmp_path)) == {3: marker}
    assert pq.read_table(tmp_path / "parquet" / "00003.parquet").num_rows == 3
    assert len(list(wds.WebDataset(str(tmp_path / "webdataset" / "00003.tar"), shardshuffle=False))) == 3
    assert np.load(tmp_path / "embeddings" / "img_emb" / "img_emb_00003.npy").shape == (3, DIM)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_rewrite_with_fewer_formats_removes_the_other_formats_files(tmp_path: Path) -> None:
    write_unit(unit_frame(4, ["ok", "ok"]), output=OutputSpec(str(tmp_path), formats=ALL_FORMATS))
    marker = write_unit(unit_frame(4, ["ok", "ok"]), output=OutputSpec(str(tmp_path), formats=("parquet",)))
    present = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert present == sorted([*marker.files, "_units/00004.json"])
    assert marker.files == ("parquet/00004.parquet", "stats/00004_stats.json", "_units/00004.keys")


def test_retire_unit_removes_marker_and_every_file(tmp_path: Path) -> None:
    spec = OutputSpec(str(tmp_path), formats=ALL_FORMATS)
    write_unit(unit_frame(1, ["ok", "rejected", "error"]), output=spec)
    kept = write_unit(unit_frame(2, ["ok", "rejected", "error"]), output=spec)
    retire_unit(str(tmp_path), 1)
    retire_unit(str(tmp_path), 7)  # nothing there: no error
    assert commit.committed_units(str(tmp_path)) == {2: kept}
    present = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert present == sorted([*kept.files, "_units/00002.json"])


def test_crash_mid_rewrite_leaves_unit_uncommitted(tmp_path: Path, monkeypatch) -> None:
    spec = OutputSpec(str(tmp_path), formats=("parquet", "webdataset"))
    write_unit(unit_frame(5, ["ok"]), output=spec)
    assert 5 in commit.committed_units(str(tmp_path))
    real_write = storage.write_bytes

    def failing_write(fs, path, data):
        if path.endswith(".tar"):
            raise OSError("killed")
        real_write(fs, path, data)

    monkeypatch.setattr(storage, "write_bytes", failing_write)
    with pytest.raises(OSError):
        write_unit(unit_frame(5, ["ok", "ok"]), output=spec)
    assert commit.committed_units(str(tmp_path)) == {}  # the old marker went first; no new one


# --- summary -------------------------------------------------------------------------------------------------


def test_summary_aggregates_and_redacts(tmp_path: Path) -> None:
    spec = OutputSpec(str(tmp_path))
    write_unit(unit_frame(0, ["ok", "rejected", "error"]), output=spec)
    write_unit(unit_frame(1, ["ok", "ok"]), output=spec)
    config = {
        "input": {
            "uri": "s3://user:hunter2@bucket/in",
            "storage_options": {"key": "AKIA", "secret": "s3cr3t"},
        },
        "output": {
            "uri": "s3://bucket/out",
            "aws_secret_access_key": "x",
            "sessionToken": "t",
            "formats": ["p"],
        },
        "hf_token": "hf_abc",
        "sources": [{"password": "p", "name": "kept"}],
        "model": {"id": "tiny", "steps": 2},
    }
    summary = write_summary(
        str(tmp_path), inputs=5, config=config, run=RunWork(2.0, 1, 5), versions={"ray": ray.__version__}
    )
    on_disk = json.loads(read_file(tmp_path, "_summary.json"))
    assert on_disk == summary
    assert summary["last_work_run"] == summary["run"]
    assert (summary["inputs"], summary["written"], summary["rejected"], summary["errored"]) == (5, 3, 1, 1)
    assert summary["units"] == 2
    assert summary["rejected_reasons"] == {"clip_score below 0.2": 1}
    assert summary["error_reasons"] == {"generate: out of memory": 1}
    assert summary["run"]["records_per_s"] == 2.5 and summary["versions"] == {"ray": ray.__version__}
    assert summary["config"] == {
        "input": {"uri": "s3://bucket/in", "storage_options": {}},
        "output": {"uri": "s3://bucket/out", "formats": ["p"]},
        "sources": [{"name": "kept"}],
        "model": {"id": "tiny", "steps": 2},
    }
    text = read_file(tmp_path, "_summary.json").decode()
    for secret in ("hunter2", "AKIA", "s3cr3t", "hf_abc"):
        assert secret not in text


def test_summary_raises_when_records_are_unaccounted(tmp_path: Path) -> None:
    write_unit(unit_frame(0, ["ok", "ok"]), output=OutputSpec(str(tmp_path)))
    with pytest.raises(AccountingError, match="3 inputs but 2 written"):
        write_summary(str(tmp_path), inputs=3, config={}, run=RunWork(1.0, 1, 1), versions={})
    assert not (tmp_path / "_summary.json").exists()


def test_summary_counts_every_sample_of_every_input(tmp_path: Path) -> None:
    write_unit(unit_frame(0, ["ok", "rejected", "ok", "error"]), output=OutputSpec(str(tmp_path)))
    summary = write_summary(
        str(tmp_path), inputs=2, samples_per_input=2, config={}, run=RunWork(2.0, 1, 4), versions={}
    )
    assert (summary["inputs"], summary["samples_per_input"], summary["records"]) == (2, 2, 4)
    assert (summary["written"], summary["rejected"], summary["errored"]) == (2, 1, 1)
    assert summary["run"]["records_per_s"] == 2.0
    assert outcome_line(summary) == "2 inputs x 2 samples = 4 records -> 2 written, 1 rejected, 1 errored"
    with pytest.raises(AccountingError, match=r"6 records \(2 inputs x 3 samples\) but 2 written"):
        write_summary(
            str(tmp_path), inputs=2, samples_per_input=3, config={}, run=RunWork(1.0, 1, 1), versions={}
        )


def test_redact_keeps_non_secrets() -> None:
    assert redact(
        {"unit_size": 3, "items": [1, "http://a@b/c"], "apiKey": "x", "caption_max_tokens": 67}
    ) == {
        "unit_size": 3,
        "items": [1, "http://b/c"],
        "caption_max_tokens": 67,
    }


# --- object store and Ray ------------------------------------------------------------------------------------


def test_write_unit_and_summary_on_s3(s3_bucket: str, s3fs_storage_options: dict) -> None:
    out = f"s3://{s3_bucket}/job"
    spec = OutputSpec(out, formats=ALL_FORMATS, storage_options=s3fs_storage_options)
    write_unit(unit_frame(0, ["ok", "rejected"]), output=spec)
    write_unit(unit_frame(1, ["ok", "ok", "error"]), output=spec)
    found = commit.committed_units(out, s3fs_storage_options)
    assert sorted(found) == [0, 1]
    summary = write_summary(
        out, inputs=5, config={}, run=RunWork(1.0, 1, 1), versions={}, storage_options=None
    )
    assert summary["written"] == 3
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    assert fs.exists(f"{s3_bucket}/job/_summary.json")
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{s3_bucket}/job/webdataset/00001.tar"))) as tar:
        assert len(tar.getnames()) == 2 * 3  # two written samples: jpg, txt and json each
    with fs.open(f"{s3_bucket}/job/rejected/00000.parquet", "rb") as f:
        assert pq.read_table(f).column("reason").to_pylist() == ["clip_score below 0.2"]


@pytest.mark.usefixtures("ray_local")
def test_units_flow_through_ray_into_the_writer(tmp_path: Path) -> None:
    """A count input through a fake generate stage and the writer: one write per unit, exact accounting."""
    spec = OutputSpec(str(tmp_path), formats=ALL_FORMATS)

    def generate(batch: pd.DataFrame) -> pd.DataFrame:
        n = len(batch)
        rng = np.random.default_rng(int(batch[r.UNIT].iloc[0]))
        statuses = ["rejected" if key.endswith("3") else "ok" for key in batch[r.KEY]]
        return batch.assign(
            **{
                r.MODE: "joint",
                r.TEXT: [f"caption {k}" for k in batch[r.KEY]],
                r.GENERATED_CAPTION: [f"caption {k}" for k in batch[r.KEY]],
                r.SEED: range(n),
                r.OUT_PIXELS: [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)],
                r.CLIP_SCORE: rng.random(n),
                r.IMAGE_EMBEDDING: [rng.random(DIM, dtype=np.float32) for _ in range(n)],
                r.TEXT_EMBEDDING: [rng.random(DIM, dtype=np.float32) for _ in range(n)],
                r.STATUS: statuses,
                r.REASON: [None if s == "ok" else "low score" for s in statuses],
                r.MODEL_ID: "tiny",
                r.PARAMS: "{}",
            }
        )

    def write(batch: pd.DataFrame) -> pd.DataFrame:
        marker = write_unit(batch, output=spec)
        return pd.DataFrame([{k: getattr(marker, k) for k in ("unit", "records", "written", "rejected")}])

    ds = read_count(11, unit_size=4)
    ds = ds.map_batches(generate, batch_size=None, batch_format="pandas")
    results = ds.map_batches(write, batch_size=None, batch_format="pandas").take_all()
    assert sorted((row["unit"], row["records"]) for row in results) == [(0, 4), (1, 4), (2, 3)]
    summary = write_summary(str(tmp_path), inputs=11, config={}, run=RunWork(1.0, 1, 1), versions={})
    assert (summary["written"], summary["rejected"]) == (10, 1)
    assert len(list(wds.WebDataset(str(tmp_path / "webdataset" / "00000.tar"), shardshuffle=False))) == 3
    assert np.load(tmp_path / "embeddings" / "img_emb" / "img_emb_00002.npy").shape == (3, DIM)
    assert tuple(unit_writer.SELECTABLE) == ALL_FORMATS


def test_a_shard_without_written_records_opens_in_every_parquet_reader(tmp_path: Path) -> None:
    """A unit whose records were all rejected writes a shard with its schema and no row group, which
    ``datasets`` (batch size from the first row group), pyarrow and pandas all read beside a full one."""
    import datasets
    import pandas as pd

    from pipelines.writers.parquet_shards import parquet_bytes

    schema = pa.schema([("key", pa.string()), ("clip_score", pa.float32())])
    folder = tmp_path / "parquet"
    folder.mkdir()
    (folder / "00000.parquet").write_bytes(
        parquet_bytes(pa.table({"key": ["a"], "clip_score": [0.5]}, schema))
    )
    (folder / "00001.parquet").write_bytes(parquet_bytes(schema.empty_table()))
    assert pq.read_metadata(folder / "00001.parquet").num_row_groups == 0
    assert pq.read_schema(folder / "00001.parquet") == schema
    assert pd.read_parquet(folder)["key"].tolist() == ["a"]
    loaded = datasets.load_dataset(
        "parquet", data_files=str(folder / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert loaded["key"] == ["a"]
