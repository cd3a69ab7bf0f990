"""The training command end to end (``--quick``): every part trained, saved in the engine's layout, loadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTokenizer, GPT2Tokenizer

from shapes.clip import image_embeddings, text_hidden_states
from shapes.train import main
from shapes.world import ShapesWorld
from unidiffuser import UniDiffuserEngine, write_tiny_checkpoint
from unidiffuser.checkpoint import COMPONENTS
from unidiffuser.components import load_components
from unidiffuser.noise import RecordNoise


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes-quick") / "ckpt"
    assert main(["--out", str(out), "--seed", "0", "--quick"]) == 0
    return out


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_layout_is_the_tiny_checkpoint_layout_plus_the_scorer(quick: Path, tmp_path: Path):
    tiny = write_tiny_checkpoint(tmp_path / "tiny")
    for name in COMPONENTS:
        assert (quick / name).is_dir()
        # same files as the tiny checkpoint (the tokenizers add the classic vocab.json / merges.txt)
        assert _names(tiny / name) <= _names(quick / name), name
    assert json.loads((quick / "model_index.json").read_text()) == json.loads(
        (tiny / "model_index.json").read_text()
    )
    assert (quick / "clip" / "config.json").is_file() and (
        quick / "clip" / "preprocessor_config.json"
    ).is_file()
    report = json.loads((quick / "training_report.json").read_text())
    assert report["seed"] == 0 and report["quick"] is True
    assert set(report["parts"]) == {"data", "vae", "clip", "caption", "uvit"}
    for part in ("vae", "clip", "caption", "uvit"):
        assert report["parts"][part]["curve"] and report["parts"][part]["seconds"] >= 0
    assert report["checkpoint_bytes"] < 20e6


def test_loads_through_the_engine_and_runs_t2i_and_i2t(quick: Path):
    engine = UniDiffuserEngine.from_pretrained(quick, steps=2, guidance_scale=3.0, batch_size=2)
    assert engine.resolution == 64
    images = engine.t2i(
        ["a small red circle in the center on a grey background", "a big blue square"], seeds=[0, 1]
    )
    assert all(r.ok and r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8 for r in images)
    captions = engine.i2t([ShapesWorld(0).sample(0).image], seeds=[0])
    assert captions[0].ok and isinstance(captions[0].text, str)


def test_engine_encodes_exactly_as_training_did(quick: Path):
    """The latents the U-ViT was trained on are the ones the engine computes at inference."""
    c = load_components(quick)
    engine = UniDiffuserEngine(c)
    sample = ShapesWorld(0).sample(3)
    hidden = text_hidden_states(c.text_encoder, c.clip_tokenizer, [sample.caption], "cpu")
    expected = c.text_decoder.encode(hidden)
    got, _ = engine.codecs.encode_prompts([sample.caption])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    _, clip = engine.codecs.encode_images([sample.image], RecordNoise([0], "cpu", torch.float32))
    torch.testing.assert_close(
        clip, image_embeddings(c.image_encoder, sample.image[None], "cpu"), rtol=1e-5, atol=1e-5
    )


def test_tokenizers_are_word_level_and_load_from_vocab_and_merges(quick: Path, tmp_path: Path):
    caption = "a little purple triangle in the top-left corner on a grey background"
    for folder, cls, extra in (("clip_tokenizer", CLIPTokenizer, 2), ("text_tokenizer", GPT2Tokenizer, 0)):
        saved = cls.from_pretrained(quick / folder)
        classic = tmp_path / folder
        classic.mkdir()
        for name in ("vocab.json", "merges.txt"):
            (classic / name).write_bytes((quick / folder / name).read_bytes())
        plain = cls.from_pretrained(classic)
        assert plain(caption).input_ids == saved(caption).input_ids
        assert len(saved(caption).input_ids) == len(caption.replace("-", " - ").split()) + extra
    assert CLIPTokenizer.from_pretrained(quick / "clip_tokenizer").model_max_length == 32
    CLIPModel.from_pretrained(quick / "clip")  # the scorer loads as the pipeline loads it


@pytest.mark.slow
def test_same_seed_same_weights(quick: Path, tmp_path: Path):
    assert main(["--out", str(tmp_path / "again"), "--seed", "0", "--quick"]) == 0
    for part in ("unet", "text_decoder"):
        a = load_file(quick / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "again" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
