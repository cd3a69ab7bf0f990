"""Conversion of thu-ml's original UniDiffuser files (tiny, built here) into the diffusers layout."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.deprecated.unidiffuser import (
    UniDiffuserModel,
    UniDiffuserPipeline,
    UniDiffuserTextDecoder,
)
from safetensors.torch import load_file

from unidiffuser.cli import main
from unidiffuser.convert import (
    MODEL_INDEX,
    convert_caption_decoder_state_dict,
    convert_checkpoint,
    convert_uvit_state_dict,
    convert_vae_state_dict,
)


def _load_original_layout():
    """The sibling helper module (tests run with --import-mode=importlib, so it is loaded by path)."""
    path = Path(__file__).with_name("original_layout.py")
    spec = importlib.util.spec_from_file_location("unidiffuser_tests_original_layout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ol = _load_original_layout()
HEADS = 2
TEXT_HIDDEN = 32  # CLIP text width = caption decoder prefix_inner_dim
TEXT_DIM = 8  # U-ViT text_dim = caption decoder prefix_hidden_dim
CLIP_IMG_DIM = 16
UVIT_VARIANTS = [
    pytest.param(0, False, False, id="v0"),
    pytest.param(1, False, False, id="v1"),
    pytest.param(1, True, True, id="v1-qkv_bias-mlp_time_embed"),
]


def _numel(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state_dict.values())


def _uvit(version: int, qkv_bias: bool = False, mlp_time_embed: bool = False):
    original = ol.make_uvit_state_dict(
        version,
        text_dim=TEXT_DIM,
        clip_img_dim=CLIP_IMG_DIM,
        qkv_bias=qkv_bias,
        mlp_time_embed=mlp_time_embed,
    )
    converted, config = convert_uvit_state_dict(original, version, num_attention_heads=HEADS)
    return original, converted, config


@pytest.mark.parametrize(("version", "qkv_bias", "mlp_time_embed"), UVIT_VARIANTS)
def test_uvit_loads_strictly_and_keeps_every_tensor(
    version: int, qkv_bias: bool, mlp_time_embed: bool
) -> None:
    original, converted, config = _uvit(version, qkv_bias, mlp_time_embed)
    assert config["use_data_type_embedding"] is (version == 1)
    assert config["attention_bias"] is qkv_bias and config["use_timestep_embedding"] is mlp_time_embed
    assert (config["sample_size"], config["patch_size"], config["in_channels"]) == (8, 2, 4)
    assert (config["num_attention_heads"], config["attention_head_dim"], config["num_layers"]) == (
        HEADS,
        16,
        2,  # thu-ml's depth, as the published config writes it (1 in block, the mid block, 1 out block)
    )
    assert (config["text_dim"], config["clip_img_dim"], config["num_text_tokens"]) == (
        TEXT_DIM,
        CLIP_IMG_DIM,
        77,
    )

    model = UniDiffuserModel(**config)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # every original tensor is used once; the only extra is diffusers' unused second patch embedding
    duplicate = (
        converted["transformer.pos_embed.proj.weight"].numel()
        + converted["transformer.pos_embed.proj.bias"].numel()
    )
    assert _numel(converted) == _numel(original) + duplicate == _numel(model.state_dict())
    assert torch.equal(converted["vae_img_out.weight"], original["decoder_pred.weight"])


@pytest.mark.parametrize(("version", "qkv_bias", "mlp_time_embed"), UVIT_VARIANTS)
def test_uvit_forward_matches_original_reference(version: int, qkv_bias: bool, mlp_time_embed: bool) -> None:
    original, converted, config = _uvit(version, qkv_bias, mlp_time_embed)
    model = UniDiffuserModel(**config).eval()
    model.load_state_dict(converted, strict=True)
    gen = torch.Generator().manual_seed(1)
    batch = 2
    img = torch.randn(batch, 4, 8, 8, generator=gen)
    clip_img = torch.randn(batch, 1, CLIP_IMG_DIM, generator=gen)
    text = torch.randn(batch, 77, TEXT_DIM, generator=gen)
    t_img, t_text = torch.tensor([10, 700]), torch.tensor([999, 0])
    data_type = torch.tensor([1, 0]) if version == 1 else None

    with torch.no_grad():
        expected = ol.uvit_reference_forward(
            original, img, clip_img, text, t_img, t_text, data_type, num_heads=HEADS
        )
        kwargs = {"data_type": data_type} if version == 1 else {}
        actual = model(img, clip_img, text, timestep_img=t_img, timestep_text=t_text, **kwargs)
    for name, exp, act in zip(("img", "clip_img", "text"), expected, actual, strict=True):
        assert act.shape == exp.shape, name
        torch.testing.assert_close(act, exp, atol=1e-5, rtol=1e-5, msg=name)


def test_uvit_version_and_heads_are_checked() -> None:
    v1 = ol.make_uvit_state_dict(1, text_dim=TEXT_DIM, clip_img_dim=CLIP_IMG_DIM)
    _, config = convert_uvit_state_dict(v1, None, num_attention_heads=HEADS)
    assert config["use_data_type_embedding"] is True
    with pytest.raises(ValueError, match="data-type token"):
        convert_uvit_state_dict(v1, 0, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match="data-type token"):
        convert_uvit_state_dict(ol.make_uvit_state_dict(0), 1, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match="attention heads"):
        convert_uvit_state_dict(v1, 1)  # 32 wide: not a multiple of the default head width 64
    wide = ol.make_uvit_state_dict(0, embed_dim=128)
    _, config = convert_uvit_state_dict(
        {f"module.{k}": v for k, v in wide.items()}
    )  # DDP prefix, heads = 128 / 64
    assert (config["num_attention_heads"], config["attention_head_dim"]) == (2, 64)
    with pytest.raises(ValueError, match="right file"):  # the caption decoder passed as the U-ViT
        convert_uvit_state_dict(ol.caption_model_checkpoint(ol.make_caption_model()))
    with pytest.raises(ValueError, match="not converted: extra.weight"):
        convert_uvit_state_dict({**v1, "extra.weight": torch.zeros(1)}, num_attention_heads=HEADS)


def test_caption_decoder_matches_original_modules() -> None:
    original = ol.make_caption_model(n_embd=32, n_head=2, prefix_inner_dim=TEXT_HIDDEN, hidden_dim=TEXT_DIM)
    checkpoint = ol.caption_model_checkpoint(original)
    converted, config = convert_caption_decoder_state_dict(checkpoint, n_head=2)
    assert config["prefix_length"] == 77
    assert (config["prefix_inner_dim"], config["prefix_hidden_dim"]) == (TEXT_HIDDEN, TEXT_DIM)
    assert (config["vocab_size"], config["n_positions"], config["n_embd"], config["n_layer"]) == (
        300,
        160,
        32,
        2,
    )
    assert (config["n_head"], config["n_inner"], config["activation_function"]) == (2, 128, "gelu_new")
    lm_head, wte = converted["transformer.lm_head.weight"], converted["transformer.transformer.wte.weight"]
    assert torch.equal(lm_head, wte) and lm_head.data_ptr() != wte.data_ptr()  # a copy: safetensors-safe

    decoder = UniDiffuserTextDecoder(**config).eval()
    result = decoder.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    gen = torch.Generator().manual_seed(2)
    clip_text = torch.randn(2, 77, TEXT_HIDDEN, generator=gen)
    tokens = torch.randint(0, 300, (2, 5), generator=gen)
    with torch.no_grad():
        latent = decoder.encode(clip_text)
        torch.testing.assert_close(latent, original.encode_prefix(clip_text), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            decoder.decode_prefix(latent), original.decode_prefix(latent), atol=1e-6, rtol=1e-6
        )
        out, hidden = decoder(tokens, clip_text)
        expected_logits, expected_hidden = original(tokens, clip_text)
    torch.testing.assert_close(hidden, expected_hidden, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.logits, expected_logits, atol=1e-5, rtol=1e-5)


def test_caption_decoder_drops_clip_keys_and_rejects_other_unknown_keys() -> None:
    model = ol.make_caption_model()
    plain, _ = convert_caption_decoder_state_dict(ol.caption_model_checkpoint(model), n_head=2)
    with_clip, _ = convert_caption_decoder_state_dict(
        ol.caption_model_checkpoint(model, clip_keys=True), n_head=2
    )
    assert with_clip.keys() == plain.keys() and all(torch.equal(with_clip[k], plain[k]) for k in plain)
    checkpoint = ol.caption_model_checkpoint(model)
    with pytest.raises(ValueError, match="unrecognised keys: project.weight"):
        convert_caption_decoder_state_dict({**checkpoint, "module.project.weight": torch.zeros(1)}, n_head=2)


def test_vae_matches_ldm_reference() -> None:
    original = ol.make_ldm_vae_state_dict()
    converted, config = convert_vae_state_dict({f"first_stage_model.{k}": v for k, v in original.items()})
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert (config["latent_channels"], config["scaling_factor"]) == (4, 0.18215)
    vae = AutoencoderKL(**config).eval()
    result = vae.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert _numel(converted) == _numel(original)

    gen = torch.Generator().manual_seed(3)
    image, latents = torch.randn(1, 3, 16, 16, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(
            vae.decode(latents).sample, ol.ldm_vae_decode(original, latents), atol=1e-5, rtol=1e-5
        )
        moments = vae.encode(image).latent_dist.parameters
        torch.testing.assert_close(moments, ol.ldm_vae_encode(original, image), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- end to end


def _write_original_files(root: Path, version: int) -> dict[str, Path]:
    """thu-ml's three .pth files plus local CLIP / gpt2 folders, all tiny and mutually consistent."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = ol.write_gpt2_tokenizer_folder(root / "gpt2") + 1  # + thu-ml's <|EOS|>
    paths = {
        "uvit": root / f"uvit_v{version}.pth",
        "autoencoder": root / "autoencoder_kl.pth",
        "caption_decoder": root / "caption_decoder.pth",
        "clip_text_model": root / "clip-vit-large-patch14",
        "clip_image_model": root / "clip-vit-base-patch32",
        "gpt2_tokenizer": root / "gpt2",
    }
    uvit = ol.make_uvit_state_dict(version, text_dim=TEXT_DIM, clip_img_dim=CLIP_IMG_DIM, embed_dim=64)
    torch.save(uvit, paths["uvit"])
    torch.save({"state_dict": ol.make_ldm_vae_state_dict()}, paths["autoencoder"])
    caption = ol.make_caption_model(vocab_size=vocab, n_embd=64, n_head=1, prefix_inner_dim=TEXT_HIDDEN)
    torch.save(ol.caption_model_checkpoint(caption, clip_keys=True), paths["caption_decoder"])
    ol.write_clip_folder(paths["clip_text_model"], text_hidden=TEXT_HIDDEN, projection_dim=24)
    ol.write_clip_folder(paths["clip_image_model"], text_hidden=16, projection_dim=CLIP_IMG_DIM, seed=1)
    return paths


@pytest.fixture(scope="module")
def converted_v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("convert_v1")
    paths = _write_original_files(root / "original", 1)
    out = convert_checkpoint(**{k: str(v) for k, v in paths.items()}, output_dir=root / "diffusers")
    return paths, out


def test_convert_checkpoint_writes_the_diffusers_layout(converted_v1: tuple[dict[str, Path], Path]) -> None:
    paths, out = converted_v1
    for name in MODEL_INDEX:
        if not name.startswith("_"):
            assert (out / name).is_dir(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".diffusers.tmp")]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "UniDiffuserPipeline" and index["unet"][1] == "UniDiffuserModel"

    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "UniDiffuserModel" and unet_config["use_data_type_embedding"] is True
    assert unet_config["num_attention_heads"] == 1 and unet_config["attention_head_dim"] == 64  # 64 wide
    unet_weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    original = torch.load(paths["uvit"], weights_only=True)
    assert torch.equal(unet_weights["data_type_token_embedding.weight"], original["token_embedding.weight"])

    decoder_config = json.loads((out / "text_decoder" / "config.json").read_text())
    assert decoder_config["_class_name"] == "UniDiffuserTextDecoder" and decoder_config["n_head"] == 1
    decoder_weights = load_file(out / "text_decoder" / "diffusion_pytorch_model.safetensors")
    assert "transformer.lm_head.weight" in decoder_weights
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias")) for k in decoder_weights)

    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == 0.18215 and vae_config["sample_size"] == 16  # 8 latents x 2
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler"
    assert (scheduler["beta_schedule"], scheduler["solver_order"], scheduler["beta_start"]) == (
        "scaled_linear",
        3,
        0.00085,
    )
    assert (out / "clip_image_processor" / "preprocessor_config.json").read_text() == (
        paths["clip_image_model"] / "preprocessor_config.json"
    ).read_text()
    tokenizer_config = json.loads((out / "text_tokenizer" / "tokenizer_config.json").read_text())
    assert "<|EOS|>" in json.dumps(tokenizer_config)


def test_converted_folder_runs_in_diffusers_pipeline(converted_v1: tuple[dict[str, Path], Path]) -> None:
    _, out = converted_v1
    pipe = UniDiffuserPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.text_tokenizer.eos_token == "<|EOS|>"
    assert pipe.text_tokenizer.eos_token_id == pipe.text_decoder.config.vocab_size - 1
    pipe.set_text_mode()
    result = pipe(num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert isinstance(result.text, list) and len(result.text) == 1 and isinstance(result.text[0], str)


def test_cli_converts_v0(tmp_path: Path) -> None:
    paths = _write_original_files(tmp_path / "original", 0)
    argv = [
        "--uvit", str(paths["uvit"]),
        "--autoencoder", str(paths["autoencoder"]),
        "--caption-decoder", str(paths["caption_decoder"]),
        "--clip-text", str(paths["clip_text_model"]),
        "--clip-image", str(paths["clip_image_model"]),
        "--gpt2-tokenizer", str(paths["gpt2_tokenizer"]),
        "--out", str(tmp_path / "out"),
        "--version", "0",
    ]  # fmt: skip
    assert main(["convert", *argv]) == 0
    unet = UniDiffuserModel.from_pretrained(tmp_path / "out" / "unet")
    assert unet.config.use_data_type_embedding is False
    assert main(["convert", *argv]) == 1  # the output folder is now non-empty
    assert main(["convert", *argv, "--overwrite"]) == 0


def test_missing_input_file_names_the_path(tmp_path: Path) -> None:
    paths = {k: str(v) for k, v in _write_original_files(tmp_path / "original", 1).items()}
    missing = tmp_path / "nowhere" / "caption_decoder.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        convert_checkpoint(**{**paths, "caption_decoder": str(missing)}, output_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="clip-missing"):
        convert_checkpoint(
            **{**paths, "clip_text_model": str(tmp_path / "clip-missing")}, output_dir=tmp_path / "o"
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_mismatched_inputs_leave_no_output(tmp_path: Path) -> None:
    paths = {k: str(v) for k, v in _write_original_files(tmp_path / "original", 1).items()}
    with pytest.raises(
        ValueError, match="projection_dim vs U-ViT clip_img_dim"
    ):  # the text CLIP projects to 24
        convert_checkpoint(
            **{**paths, "clip_image_model": paths["clip_text_model"]}, output_dir=tmp_path / "out"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original"]


def test_converted_folder_loads_with_project_loader(converted_v1: tuple[dict[str, Path], Path]) -> None:
    from unidiffuser.components import load_components

    _, out = converted_v1
    components = load_components(out)
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    uvit_state = components.uvit.state_dict()
    assert all(torch.equal(uvit_state[k], v) for k, v in weights.items() if k in uvit_state)
    assert components.text_tokenizer.eos_token == "<|EOS|>"
    assert components.resolution == 16
