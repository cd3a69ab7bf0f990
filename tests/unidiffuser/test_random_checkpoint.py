"""Random checkpoints of any size: the tiny one the tests use, and the full-size one the GPU benchmark writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from unidiffuser import Mode, UniDiffuserEngine
from unidiffuser.checkpoint import checkpoint_identity
from unidiffuser.cli import main
from unidiffuser.codecs import cpu_conv_chunk
from unidiffuser.marks.marking import read_marks
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA
from unidiffuser.tiny import CheckpointSizes, tiny_uvit_config, uvit_h_config, write_random_checkpoint


def test_full_size_matches_unidiffuser_v1() -> None:
    """The dimensions the issue names for the GPU benchmark (thu-ml's published UniDiffuser-v1)."""
    sizes = CheckpointSizes.full(version=1)
    uvit = sizes.uvit
    assert (uvit.inner_dim, uvit.num_attention_heads, uvit.num_blocks, uvit.patch_size) == (1536, 24, 31, 2)
    assert (uvit.sample_size, uvit.in_channels, uvit.num_text_tokens, uvit.text_dim) == (64, 4, 77, 64)
    assert uvit.clip_img_dim == 512 and uvit.use_data_type_embedding
    assert not uvit_h_config(version=0).use_data_type_embedding
    assert sizes.resolution == 512
    assert (sizes.text_hidden, sizes.text_layers, sizes.vision_hidden, sizes.vision_patch) == (
        768,
        12,
        768,
        32,
    )
    assert (sizes.decoder_embd, sizes.decoder_layers, sizes.decoder_positions) == (768, 12, 1024)


def test_other_sizes_write_consistent_loadable_checkpoints(tmp_path: Path) -> None:
    """Every component follows the sizes (here: three VAE levels, a wider text encoder, deeper decoder), and
    the engine loads and runs the result at the resolution they imply."""
    uvit = replace(tiny_uvit_config(0), sample_size=4, clip_img_dim=12, num_layers=4)
    sizes = replace(
        CheckpointSizes.tiny(0), uvit=uvit, vae_channels=(8, 8, 16), text_hidden=48, decoder_layers=3
    )
    path = write_random_checkpoint(tmp_path / "ckpt", sizes)
    assert sizes.resolution == 16
    text = json.loads((path / "text_encoder" / "config.json").read_text())
    vision = json.loads((path / "image_encoder" / "config.json").read_text())
    decoder = json.loads((path / "text_decoder" / "config.json").read_text())
    assert (text["hidden_size"], text["intermediate_size"], vision["projection_dim"]) == (48, 96, 12)
    assert (decoder["n_layer"], decoder["prefix_inner_dim"]) == (3, 48)
    engine = UniDiffuserEngine.from_pretrained(path, steps=2, caption_max_tokens=5)
    assert engine.resolution == 16 and not engine.components.uvit.config.use_data_type_embedding
    images = engine.t2i(["a red circle"], [0])
    assert images[0].ok and images[0].image.shape == (16, 16, 3)
    captions = engine.i2t([images[0].image], [1])
    assert captions[0].ok and isinstance(captions[0].text, str)


def test_engine_cli_writes_a_checkpoint_and_samples_every_mode(tmp_path: Path) -> None:
    """``unidiffuser-engine tiny-checkpoint`` then ``sample``: every mode's results saved, the bad inputs
    (a blank prompt, bytes that are no image) reported per record."""
    assert main(["tiny-checkpoint", str(tmp_path / "tiny"), "--version", "0", "--seed", "3"]) == 0
    assert (
        json.loads((tmp_path / "tiny" / "unet" / "config.json").read_text())["use_data_type_embedding"]
        is False
    )
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "tiny"), "--out", str(out), "--steps", "2"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report) == {m.value for m in Mode}
    assert [e["error"] is None for e in report["t2i"]] == [True, True, False]  # the third prompt is blank
    assert [e["error"] is None for e in report["i2t"]] == [True, False]
    assert all(isinstance(e["text"], str) for e in report["joint"])
    assert len(report["interpolate"][0]["images"]) == 4 + 1  # the last frame, then every frame
    for entries in report.values():
        for entry in entries:
            assert all((out / name).is_file() for name in entry["images"])
    # every image the engine made says so itself, with its own record
    first = read_marks((out / report["t2i"][0]["images"][0]).read_bytes())
    assert first.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert (first.record.mode, first.record.prompt, first.record.seed) == (
        "t2i",
        "a red circle on a grey background",
        1,
    )
    assert first.record.steps == 2 and first.record.model_version == checkpoint_identity(tmp_path / "tiny")
    frames = [read_marks((out / name).read_bytes()) for name in report["interpolate"][0]["images"]]
    assert all(m.record.mode == "interpolate" for m in frames)


def test_cpu_conv_chunks_shrink_with_the_image() -> None:
    """Small images are decoded several at a time on CPU, large ones alone (a padded chunk costs whole images)."""
    assert [cpu_conv_chunk(r) for r in (16, 32, 64, 128, 256, 512)] == [8, 8, 4, 1, 1, 1]
