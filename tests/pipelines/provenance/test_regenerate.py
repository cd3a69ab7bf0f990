"""``regenerate``: a record rebuilt from its row, its image's marks and the job's summary (and, for an image
variation, its input file read again from the corpus) equals what the real pipeline wrote (bitwise on CPU
float32), whether it was written or rejected, in either unit, made in a batch of 4; a tampered row, a checkpoint
of another identity, a changed corpus, an unknown key, an errored record and a record rejected before generation
are told apart (exit 1 or 2, one clear line)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from pipelines.config import PipelineConfig
from pipelines.provenance.regenerate import PIXEL_TOLERANCE, CannotRegenerate, regenerate
from pipelines.provenance.stored_record import find_record
from pipelines.run import run_pipeline
from shapes.photos import photo_like
from unidiffuser.checkpoint import checkpoint_identity
from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # each module runs jobs

RESOURCES = {"cpus_per_actor": 0.5, "clip_cpus_per_actor": 0.5, "writer_cpus": 0.5, "preprocess_cpus": 0.5}
PROMPTS = ["a red circle", "a blue square", "", "a green triangle", "a forbidden star", "a yellow ring"]
SHAPES_CHECKPOINT = Path(__file__).resolve().parents[3] / "models" / "unidiffuser-shapes"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return str(write_tiny_checkpoint(root / "unidiffuser", version=1)), str(write_tiny_clip(root / "clip"))


@pytest.fixture(scope="module")
def t2i_output(models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A t2i job of 6 prompts in 2 units, 2 samples each (the better kept, the other rejected, with its image),
    batches of 4, JPEG output; one empty prompt (error rows) and one blocklisted (rejected before generation)."""
    root = tmp_path_factory.mktemp("t2i")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "blocklist.txt").write_text("forbidden\n")
    checkpoint, clip = models
    config = PipelineConfig.model_validate(
        {
            "name": "regenerate-t2i",
            "input": {"kind": "prompts", "uri": str(root / "prompts.txt")},
            "model": {"checkpoint": checkpoint, "mode": "t2i", "steps": 2, "samples_per_input": 2},
            "clip": {"enabled": True, "model": clip, "keep_best": 1},
            "curation": {"blocklist": str(root / "blocklist.txt")},
            "output": {"uri": str(root / "out"), "formats": ["parquet"], "shard_size": 3},
            "resources": RESOURCES | {"batch_size": 4},
            "seed": 5,
        }
    )
    run_pipeline(config, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def joint_output(models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A joint job (image and caption from a seed) of 3 records in one batch, PNG output, no CLIP."""
    root = tmp_path_factory.mktemp("joint")
    config = PipelineConfig.model_validate(
        {
            "input": {"kind": "count", "count": 3},
            "model": {"checkpoint": models[0], "mode": "joint", "steps": 2, "caption_max_tokens": 8},
            "output": {"uri": str(root / "out"), "formats": ["parquet"], "image_format": "png"},
            "resources": RESOURCES | {"batch_size": 3},
        }
    )
    run_pipeline(config, progress=False)
    return root / "out"


def rows(out: Path, folder: str) -> dict[str, dict]:
    return {
        row["key"]: row
        for f in sorted((out / folder).glob("*.parquet"))
        for row in pq.read_table(f).to_pylist()
    }


def key_of(out: Path, folder: str, prompt: str) -> str:
    return next(k for k, row in rows(out, folder).items() if row["prompt"] == prompt)


def test_written_records_of_both_units_are_regenerated_bitwise(t2i_output: Path, capsys) -> None:
    written = rows(t2i_output, "parquet")
    first, second = (
        key_of(t2i_output, "parquet", "a red circle"),
        key_of(t2i_output, "parquet", "a yellow ring"),
    )
    assert written[first]["image_format"] == "jpg"
    for key in (first, second):
        assert main(["regenerate", str(t2i_output), key]) == 0
        line = capsys.readouterr().out.strip()
        assert line == f"regenerate {key}: bitwise equal (t2i, seed {written[key]['seed']}, 64x64)"
    assert find_record(str(t2i_output), second).unit == 1


def test_a_rejected_record_is_regenerated_bitwise(t2i_output: Path, capsys) -> None:
    rejected = rows(t2i_output, "rejected")
    key = next(k for k, row in rejected.items() if row["image"] is not None)  # a keep_best loser
    assert "keep_best" in rejected[key]["reason"] or "best" in rejected[key]["reason"]
    assert main(["regenerate", str(t2i_output), key, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threads"] == 1, "the job's engine actors had 0.5 CPUs: Ray gave them one thread"
    assert (result["bitwise"], result["outcome"], result["max_abs_diff"], result["differing_pixels"]) == (
        True,
        "rejected",
        0,
        0,
    )


def test_a_record_made_in_a_batch_equals_itself_made_alone(t2i_output: Path, tmp_path: Path) -> None:
    """The decoded pixels of the regenerated (alone) and written (in a batch of 4) images are the same."""
    key = key_of(t2i_output, "parquet", "a green triangle")
    saved = tmp_path / "again.jpg"
    assert main(["regenerate", str(t2i_output), key, "--save", str(saved)]) == 0
    written = rows(t2i_output, "parquet")[key]["image"]
    decode = lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # noqa: E731
    np.testing.assert_array_equal(decode(saved.read_bytes()), decode(written))
    assert decode(written).std() > 0, "a real generated image, not a constant"


def test_a_tampered_seed_is_not_equal(t2i_output: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "out"
    shutil.copytree(t2i_output, copy)
    key = key_of(copy, "parquet", "a blue square")
    shard = next(f for f in sorted((copy / "parquet").glob("*.parquet")) if key in rows_of(f))
    table = pq.read_table(shard)
    seeds = [
        s + 1 if k == key else s
        for k, s in zip(table["key"].to_pylist(), table["seed"].to_pylist(), strict=True)
    ]
    pq.write_table(table.set_column(table.schema.get_field_index("seed"), "seed", [seeds]), shard)
    assert main(["regenerate", str(copy), key]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"regenerate {key}: differs (t2i, seed ") and "pixels differ, max abs diff" in line
    assert "its image's marks say seed" in line, line
    result = regenerate(str(copy), key)
    assert not result.equal and result.max_abs_diff > PIXEL_TOLERANCE and result.differing_pixels > 0


def rows_of(shard: Path) -> list[str]:
    return pq.read_table(shard, columns=["key"])["key"].to_pylist()


def test_a_record_on_object_storage_is_regenerated(
    t2i_output: Path, s3_bucket: str, s3_endpoint: str, s3fs_storage_options: dict, capsys
) -> None:
    """The output on the loopback S3 (reached with ``--endpoint-url``), the checkpoint where the spec says."""
    import fsspec

    fsspec.filesystem("s3", **s3fs_storage_options).put(str(t2i_output), f"{s3_bucket}/out", recursive=True)
    key = key_of(t2i_output, "parquet", "a yellow ring")
    assert main(["regenerate", f"s3://{s3_bucket}/out", key, "--endpoint-url", s3_endpoint]) == 0
    assert capsys.readouterr().out.startswith(f"regenerate {key}: bitwise equal (t2i, seed ")


def test_a_checkpoint_of_another_identity_is_refused(
    t2i_output: Path, models: tuple[str, str], tmp_path: Path, capsys
) -> None:
    other = write_tiny_checkpoint(tmp_path / "other", version=1, seed=1)
    key = key_of(t2i_output, "parquet", "a red circle")
    capsys.readouterr()  # the writer's progress bars
    assert main(["regenerate", str(t2i_output), key, "--checkpoint", str(other)]) == 2
    message = capsys.readouterr().err
    made_with, found = checkpoint_identity(models[0]), checkpoint_identity(other)
    assert made_with != found and made_with in message and found in message, message
    assert message.count("\n") == 1
    # a copy with the same files, sizes and times is the same version: accepted
    same = tmp_path / "same"
    shutil.copytree(models[0], same, copy_function=shutil.copy2)
    assert main(["regenerate", str(t2i_output), key, "--checkpoint", str(same)]) == 0


def test_unknown_errored_and_never_generated_records_cannot_be_regenerated(t2i_output: Path, capsys) -> None:
    assert main(["regenerate", str(t2i_output), "no-such-key"]) == 2
    assert "no record 'no-such-key'" in capsys.readouterr().err
    errored = next(iter(rows(t2i_output, "errors")))
    assert main(["regenerate", str(t2i_output), errored]) == 2
    assert "errored" in capsys.readouterr().err
    blocked = key_of(t2i_output, "rejected", "a forbidden star")
    assert main(["regenerate", str(t2i_output), blocked]) == 2
    assert "rejected before generation" in capsys.readouterr().err


@pytest.fixture(scope="module")
def variation_job(models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An i2t2i job over a folder of 3 images of two sizes and formats, in 2 units, batches of 2, PNG
    output, no CLIP: its output keeps no input image. Returns the folder holding ``images/`` and ``out/``."""
    root = tmp_path_factory.mktemp("i2t2i")
    images = root / "images"
    images.mkdir()
    for i, (name, height, width) in enumerate([("a.png", 72, 96), ("b.jpg", 64, 64), ("c.png", 64, 80)]):
        Image.fromarray(photo_like(height, width, seed=i)).save(images / name)
    config = PipelineConfig.model_validate(
        {
            "input": {"kind": "images", "uri": str(images)},
            "model": {"checkpoint": models[0], "mode": "i2t2i", "steps": 2, "caption_max_tokens": 8},
            "output": {
                "uri": str(root / "out"),
                "formats": ["parquet"],
                "image_format": "png",
                "shard_size": 2,
            },
            "resources": RESOURCES | {"batch_size": 2},
        }
    )
    run_pipeline(config, progress=False)
    return root


def test_an_image_variation_is_regenerated_from_its_input_corpus_while_that_is_unchanged(
    variation_job: Path, capsys
) -> None:
    """Each variation is remade bitwise from its input file, read again from the corpus; once an input file
    is rewritten, the records of its unit are refused (the other unit's still regenerate), and a corpus that
    is gone is named. A copy of the corpus given with ``--input`` is read, and the comparison decides."""
    out = variation_job / "out"
    written = rows(out, "parquet")
    assert sorted(written) == ["a", "b", "c"] and all(row["image"] for row in written.values())
    for key in written:
        result = regenerate(str(out), key)
        assert result.bitwise and (result.width, result.height) == (64, 64), result.describe()
    assert find_record(str(out), "c").unit == 1

    Image.fromarray(photo_like(64, 80, seed=9)).save(variation_job / "images" / "c.png")  # unit 1 changed
    capsys.readouterr()
    assert main(["regenerate", str(out), "c"]) == 2
    message = capsys.readouterr().err
    assert "unit 1 of its input corpus" in message and "changed since the job ran" in message, message
    assert message.count("\n") == 1
    assert regenerate(str(out), "a").bitwise  # unit 0 reads what the job read

    moved = variation_job / "moved"
    (variation_job / "images").rename(moved)
    with pytest.raises(CannotRegenerate, match=r"record 'a'.*input corpus .*images"):
        regenerate(str(out), "a")
    # a copy of the corpus elsewhere is read without the input hash check: the comparison alone decides
    assert regenerate(str(out), "a", input_uri=str(moved)).bitwise
    capsys.readouterr()
    assert main(["regenerate", str(out), "c", "--input", str(moved)]) == 1  # c.png was rewritten
    assert capsys.readouterr().out.startswith("regenerate c: differs (i2t2i, seed ")


def test_a_joint_record_regenerates_its_image_and_caption(joint_output: Path) -> None:
    written = rows(joint_output, "parquet")
    assert len(written) == 3
    key = sorted(written)[-1]
    result = regenerate(str(joint_output), key)
    assert result.bitwise, result.describe()
    assert result.caption == written[key]["generated_caption"] == result.regenerated_caption
    assert (result.width, result.height) == (64, 64)


@pytest.mark.parametrize("caption_image", ["source", "none"])
def test_an_i2t_caption_is_regenerated_from_its_input_image(
    models: tuple[str, str], tmp_path: Path, caption_image: str
) -> None:
    """Captioning: with ``caption_image: source`` the input file is kept in the output, so the caption made from
    it in a batch of 2 is remade from the output alone; with ``none`` it is read again from the corpus. An input
    of another size is resized as preprocess does."""
    images = tmp_path / "images"
    images.mkdir()
    for i, (height, width) in enumerate([(72, 96), (64, 64)]):
        Image.fromarray(photo_like(height, width, seed=i)).save(images / f"{i}.png")
    config = PipelineConfig.model_validate(
        {
            "input": {"kind": "images", "uri": str(images)},
            "model": {"checkpoint": models[0], "mode": "i2t", "steps": 2, "caption_max_tokens": 8},
            "output": {"uri": str(tmp_path / "out"), "formats": ["parquet"], "caption_image": caption_image},
            "resources": RESOURCES | {"batch_size": 2},
        }
    )
    run_pipeline(config, progress=False)
    written = rows(tmp_path / "out", "parquet")
    assert len(written) == 2
    assert all((row["image"] is None) == (caption_image == "none") for row in written.values())
    for key, row in written.items():
        result = regenerate(str(tmp_path / "out"), key)
        assert result.equal and result.max_abs_diff is None, result.describe()
        assert result.regenerated_caption == row["generated_caption"] is not None


@pytest.mark.skipif(
    not (SHAPES_CHECKPOINT / "model_index.json").exists(), reason="demo model not checked out"
)
def test_a_demo_record_is_regenerated_bitwise(tmp_path: Path) -> None:
    """The demo's real model (``models/unidiffuser-shapes``) with the demo's t2i settings, on two prompts."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a big red circle on a grey background\na small blue square on a white background\n")
    config = PipelineConfig.model_validate(
        {
            "name": "demo-t2i",
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {
                "checkpoint": str(SHAPES_CHECKPOINT),
                "mode": "t2i",
                "steps": 25,
                "guidance_scale": 3.0,
            },
            "output": {"uri": str(tmp_path / "out"), "formats": ["parquet"], "image_format": "png"},
            "resources": RESOURCES | {"batch_size": 2},
        }
    )
    run_pipeline(config, progress=False)
    key = sorted(rows(tmp_path / "out", "parquet"))[1]
    result = regenerate(str(tmp_path / "out"), key)
    assert result.bitwise, result.describe()
