"""``unidiffuser-batch verify``: the marks of a real job output (the pipeline run on the tiny models) check, and
tampering with one image (marks stripped, pixels replaced) or with the copies of a record (a tar image that is
not its parquet copy, a lost tar image, a record both written and rejected) fails naming the record; lone images,
tar shards, an output on S3, a watermarked and C2PA-signed job (256 px images planted in the generate stage: the
tiny model makes 64 px ones, too small for the watermark), and input images that must carry no mark."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from stand_in_engines import PhotoEngine, stage_with

from jobs.cli import main
from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.provenance.verify import check_image, verify
from pipelines.provenance.verify_targets import ImageItem, JobContext
from pipelines.run import run_pipeline
from shapes.photos import photo_like
from unidiffuser.marks.marking import mark_image, read_marks
from unidiffuser.tiny import write_tiny_checkpoint

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # each module runs jobs

RESOURCES = {"cpus_per_actor": 0.5, "clip_cpus_per_actor": 0.5, "writer_cpus": 0.5, "preprocess_cpus": 0.5}
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]  # 2 units of 2


def _config(checkpoint: str, prompts: Path, out: Path, **provenance: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "verify-test",
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {"checkpoint": checkpoint, "mode": "t2i", "steps": 1},
            "output": {"uri": str(out), "formats": ["parquet", "webdataset"], "shard_size": 2,
                       "image_format": "png"},
            "provenance": provenance,
            "resources": RESOURCES,
        }
    )  # fmt: skip


def _prompts(folder: Path) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("models") / "unidiffuser", version=1))


@pytest.fixture(scope="module")
def job_output(checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job output the real pipeline wrote with the tiny model (read-only: tests copy it to change it)."""
    root = tmp_path_factory.mktemp("job")
    out = root / "out"
    run_pipeline(_config(checkpoint, _prompts(root), out), progress=False)
    return out


@pytest.fixture
def output(job_output: Path, tmp_path: Path) -> Path:
    """A copy of the job output to tamper with."""
    return Path(shutil.copytree(job_output, tmp_path / "out"))


def _rows(shard: Path) -> list[dict]:
    return pq.read_table(shard).to_pylist()


def _rewrite_image(shard: Path, index: int, image: bytes) -> str:
    """Replace row ``index``'s image in a parquet shard (schema kept); returns its key."""
    table = pq.read_table(shard)
    images = table.column(r.IMAGE).to_pylist()
    images[index] = image
    pq.write_table(table.set_column(table.schema.get_field_index(r.IMAGE), r.IMAGE, [images]), shard)
    return str(table.column(r.KEY)[index])


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_fresh_job_output_verifies(job_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(job_output)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == (
        "verify: 8 images, 8 marked, 8 records match, 8 pixels match, watermark not asked for, "
        "c2pa absent (not asked for): OK"
    ), "4 records, each in its parquet shard and its tar"
    report = verify(str(job_output))
    assert report.ok and report.job_known and report.not_checked == ()
    assert {i.source for i in report.images} == {
        "parquet/00000.parquet", "parquet/00001.parquet", "webdataset/00000.tar", "webdataset/00001.tar"
    }  # fmt: skip
    keys = [row[r.KEY] for shard in sorted((job_output / "parquet").iterdir()) for row in _rows(shard)]
    assert sorted({i.key for i in report.images}) == sorted(keys) and len(keys) == 4


def test_json_report(job_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(job_output), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["totals"]["images"] == 8 and report["totals"]["marked"] == 8
    assert all(
        i["record"] == "ok" and i["pixels"] == "ok" and i["c2pa"] == "absent" for i in report["images"]
    )


def test_stripped_metadata_fails_naming_the_record(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = output / "parquet" / "00001.parquet"
    original = _rows(shard)[1][r.IMAGE]
    key = _rewrite_image(shard, 1, _png(_pixels(original)))  # re-encoded by PIL: same pixels, no XMP
    assert read_marks(_rows(shard)[1][r.IMAGE]) is None
    assert main(["verify", str(output)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("verify: 8 images, 7 marked, 7 records match, 8 pixels match")
    assert out.splitlines()[0].endswith(": 3 problems")
    assert f"  - parquet/00001.parquet record {key!r}: not marked as AI-generated" in out
    assert f"  - parquet/00001.parquet record {key!r}: no XMP generation record" in out
    assert (
        f"  - record {key}: its image in webdataset/00001.tar is not the one in parquet/00001.parquet" in out
    )
    assert out.count("  - ") == 3, "only the stripped image has problems (and its tar copy differs from it)"


def test_replaced_pixels_fail_even_with_the_marks_copied(
    output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = output / "parquet" / "00000.parquet"
    original = _rows(shard)[0][r.IMAGE]
    record = read_marks(original).record
    forged = mark_image(_png(255 - _pixels(original)), "png", record)  # other pixels, the same marks
    key = _rewrite_image(shard, 0, forged)
    assert read_marks(forged).record == record
    assert main(["verify", str(output)]) == 1
    out = capsys.readouterr().out
    assert "8 marked, 8 records match, 7 pixels match" in out
    assert f"  - parquet/00000.parquet record {key!r}: the pixels are not those its row describes" in out


def test_a_record_that_lies_about_its_row_fails(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = output / "parquet" / "00000.parquet"
    row = _rows(shard)[1]
    marks = read_marks(row[r.IMAGE])
    from dataclasses import replace

    lying = replace(marks.record, seed=marks.record.seed + 1, model_version="some-other-checkpoint")
    # strip the old marks (re-encode) and mark the same pixels with the lying record
    key = _rewrite_image(shard, 1, mark_image(_png(_pixels(row[r.IMAGE])), "png", lying))
    assert main(["verify", str(output)]) == 1
    out = capsys.readouterr().out
    problem = next(line for line in out.splitlines() if key in line and "generation record" in line)
    assert "the generation record differs from its row" in problem
    assert f"seed: record has {row[r.SEED] + 1}, row has {row[r.SEED]}" in problem
    assert "model_version: record has 'some-other-checkpoint', job has" in problem


def test_a_lone_image_file(job_output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = _rows(job_output / "parquet" / "00000.parquet")[0]
    image = tmp_path / "one.png"
    image.write_bytes(row[r.IMAGE])
    assert main(["verify", str(image)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "verify: 1 images, 1 marked, 0 records match, 0 pixels match, watermark not checked"
    )
    report = verify(str(image))
    assert report.ok and report.kind == "image" and not report.job_known
    assert report.images[0].key == row[r.KEY] and report.images[0].record == "not checked"
    assert any("lone image" in note for note in report.not_checked), "says what it could not check"
    assert "not checked: watermark" in out

    bare = tmp_path / "bare.png"
    bare.write_bytes(_png(_pixels(row[r.IMAGE])))
    assert main(["verify", str(bare)]) == 1
    assert "bare.png: not marked as AI-generated" in capsys.readouterr().out


def test_a_tar_shard_alone_and_in_its_job(job_output: Path, tmp_path: Path) -> None:
    in_job = verify(str(job_output / "webdataset" / "00001.tar"))
    assert in_job.ok and in_job.kind == "shard" and in_job.job_known, "its job's summary is found above it"
    assert [i.source for i in in_job.images] == ["webdataset/00001.tar"] * 2
    assert all(i.record == "ok" and i.pixels == "ok" for i in in_job.images)

    alone = tmp_path / "00001.tar"
    shutil.copy(job_output / "webdataset" / "00001.tar", alone)
    report = verify(str(alone))
    assert report.ok and not report.job_known and len(report.images) == 2
    assert any(note.startswith("job name and model version") for note in report.not_checked)
    assert main(["verify", str(alone)]) == 0


def test_a_replaced_image_in_a_tar_fails(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tarfile

    tar_path = output / "webdataset" / "00000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    name, data = next((m.name, d) for m, d in members if m.name.endswith(".png"))
    forged = mark_image(_png(255 - _pixels(data)), "png", read_marks(data).record)
    with tarfile.open(tar_path, "w") as tar:
        for member, content in members:
            content = forged if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    assert main(["verify", str(tar_path)]) == 1
    assert "webdataset/00000.tar record" in capsys.readouterr().out


def _with_text_chunk(png: bytes) -> bytes:
    """The same PNG (pixels and XMP) with one more ancillary chunk before IEND: other bytes, nothing else."""
    data = b"Comment\x00re-saved"
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    assert png.endswith(b"IEND\xaeB`\x82")
    return png[:-12] + chunk + png[-12:]


def test_copies_of_a_record_that_disagree_fail_naming_it(
    output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tar image whose bytes differ from its parquet copy (pixels and marks alike), a tar sample that lost its
    image, and a written record also listed as rejected: each is one problem naming the record and the files."""
    import tarfile

    first, second = (row[r.KEY] for row in _rows(output / "parquet" / "00000.parquet"))
    tar_path = output / "webdataset" / "00000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    image_member = {
        json.loads(data)["key"]: member.name.removesuffix(".json") + ".png"
        for member, data in members
        if member.name.endswith(".json")
    }
    changed = image_member[first]
    with tarfile.open(tar_path, "w") as tar:
        for member, content in members:
            if member.name.endswith(".png") and member.name != changed:
                continue  # the second record's image is gone
            content = _with_text_chunk(content) if member.name == changed else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    third = _rows(output / "parquet" / "00001.parquet")[0]
    (output / "rejected").mkdir(exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist([third | {"reason": "planted", "rejected_by": ["planted"]}]),
        output / "rejected" / "00001.parquet",
    )
    report = verify(str(output))
    assert not report.ok
    assert all(image.ok for image in report.images), "each copy checks alone"
    assert report.target_problems == (
        f"record {first}: its image in webdataset/00000.tar is not the one in parquet/00000.parquet (the copies' "
        "bytes differ)",
        f"record {second} has an image in parquet/00000.parquet but none in webdataset/",
        f"record {third[r.KEY]} is both written (parquet/00001.parquet) and rejected (rejected/00001.parquet)",
    )
    assert main(["verify", str(output)]) == 1
    printed = capsys.readouterr().out
    assert all(problem in printed for problem in report.target_problems), printed


def test_an_output_on_s3(
    job_output: Path, s3_bucket: str, s3_endpoint: str, s3fs_storage_options: dict,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    fs.put(str(job_output), f"{s3_bucket}/out", recursive=True)
    uri = f"s3://{s3_bucket}/out"
    assert verify(uri, s3fs_storage_options).ok
    assert main(["verify", uri, "--endpoint-url", s3_endpoint]) == 0
    assert capsys.readouterr().out.startswith("verify: 8 images, 8 marked, 8 records match")
    assert main(["verify", f"s3://{s3_bucket}/nothing-here", "--endpoint-url", s3_endpoint]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"verify: s3://{s3_bucket}/nothing-here does not exist"


def test_unreadable_targets_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["verify", str(tmp_path / "folder")]) == 2
    assert "neither an image" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert main(["verify", str(tmp_path / "junk.parquet")]) == 2
    assert "cannot read the shard junk.parquet" in capsys.readouterr().err


# --- inputs (i2t) --------------------------------------------------------------------------------------------


def _i2t_row() -> dict:
    return {r.KEY: "img-000001", r.MODE: "i2t", r.SEED: 1, r.PHASH: None, r.SYNTHETIC: ["generated_caption"]}


def test_an_input_image_must_carry_no_synthetic_mark(job_output: Path) -> None:
    generated = _rows(job_output / "parquet" / "00000.parquet")[0]
    source = _png(photo_like(40, 40, seed=1))
    from pipelines.dedup.phash import phash

    clean = check_image(ImageItem(source, "parquet/00000.parquet", _i2t_row() | {r.PHASH: phash(source)}),
                        JobContext())  # fmt: skip
    assert clean.ok and not clean.generated and not clean.marked
    marked = mark_image(source, "png", read_marks(generated[r.IMAGE]).record)
    check = check_image(ImageItem(marked, "parquet/00000.parquet", _i2t_row() | {r.PHASH: phash(source)}),
                        JobContext())  # fmt: skip
    assert not check.ok and check.marked
    assert check.problems == (
        "parquet/00000.parquet record 'img-000001': an input image (not generated) is marked as "
        "trainedAlgorithmicMedia",
    )


# --- a watermarked, C2PA-signed job -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory, credentials, root_ca, other_ca) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    files = {"chain": credentials.chain, "key": credentials.key, "root": root_ca.pem, "other": other_ca.pem}
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return {name: folder / f"{name}.pem" for name in files}


@pytest.fixture(scope="module")
def signed_output(
    checkpoint: str, pem_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("signed")
    out = root / "out"
    c2pa = {"certificate": str(pem_files["chain"]), "private_key": str(pem_files["key"])}
    config = _config(checkpoint, _prompts(root), out, watermark=True, c2pa=c2pa)
    run_pipeline(config, generate_cls=stage_with(PhotoEngine()), progress=False)
    return out


def test_a_watermarked_signed_job_verifies_against_its_root(
    signed_output: Path, pem_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(signed_output), "--trust-anchors", str(pem_files["root"])]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "verify: 8 images, 8 marked, 8 records match, 8 pixels match, watermark 8/8, c2pa 8 valid: OK"
    )
    assert main(["verify", str(signed_output)]) == 0, "without anchors a checking signature is enough"
    assert "c2pa 8 untrusted (no trust anchors given): OK" in capsys.readouterr().out
    assert main(["verify", str(signed_output), "--trust-anchors", str(pem_files["other"])]) == 1
    assert "does not chain to the trust anchors given" in capsys.readouterr().out
    report = verify(str(signed_output), trust_anchors=pem_files["root"].read_bytes())
    assert all(i.watermark == "ok" and i.watermark_match == 1.0 for i in report.images)


def test_a_missing_watermark_or_manifest_fails_naming_the_record(
    signed_output: Path, job_output: Path, tmp_path: Path, pem_files: dict[str, Path]
) -> None:
    out = Path(shutil.copytree(signed_output, tmp_path / "out"))
    shard = out / "parquet" / "00000.parquet"
    row = _rows(shard)[0]
    record = read_marks(row[r.IMAGE]).record
    unsigned = mark_image(_png(_pixels(row[r.IMAGE])), "png", record)  # marks kept, manifest dropped
    key = _rewrite_image(shard, 0, unsigned)
    problems = verify(str(out), trust_anchors=pem_files["root"].read_bytes()).problems
    assert problems == [
        f"record {key}: its image in webdataset/00000.tar is not the one in parquet/00000.parquet (the copies' "
        "bytes differ)",
        f"parquet/00000.parquet record {key!r}: C2PA manifest asked for, but absent",
    ]

    # the same pixels without the watermark: the original photo, marked and pHash-close
    row = _rows(shard)[1]
    unmarked = mark_image(
        _png(photo_like(256, 256, seed=row[r.SEED] % 1000)), "png", read_marks(row[r.IMAGE]).record
    )
    key = _rewrite_image(shard, 1, unmarked)
    problems = verify(str(out), trust_anchors=pem_files["root"].read_bytes()).problems
    assert any(p.startswith(f"parquet/00000.parquet record {key!r}: watermark asked for, but the job's payload")
               for p in problems), problems  # fmt: skip


def test_the_watermark_check_reads_the_units_payload(job_output: Path) -> None:
    """Without a pipeline run (the fast check of the slow job above): the payload of the unit's fingerprint."""
    from pipelines.dedup.phash import phash
    from pipelines.provenance.watermark import embed_watermark, watermark_payload

    row = _rows(job_output / "parquet" / "00000.parquet")[0]
    record = read_marks(row[r.IMAGE]).record
    photo = photo_like(256, 256, seed=5)
    job = JobContext(watermark=True, fingerprint="job-fp", unit_fingerprints={0: "unit-fp"})
    for pixels, unit, expected in (
        (embed_watermark(photo, watermark_payload("unit-fp")), 0, "ok"),
        (embed_watermark(photo, watermark_payload("job-fp")), 0, "problem"),  # the unit's marker decides
        (embed_watermark(photo, watermark_payload("job-fp")), 7, "ok"),  # no marker: the summary's
        (photo, 0, "problem"),
    ):
        data = mark_image(_png(pixels), "png", record)
        check = check_image(ImageItem(data, "parquet/00000.parquet", row | {r.PHASH: phash(data)}, unit), job)
        assert check.watermark == expected, (unit, check.problems)
        assert check.ok == (expected == "ok")
