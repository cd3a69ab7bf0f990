"""Convert thu-ml's original UniDiffuser checkpoint files into the diffusers folder layout.

thu-ml publishes UniDiffuser as plain PyTorch files:

* ``uvit_v0.pth`` / ``uvit_v1.pth``: the U-ViT (``libs/uvit_multi_post_ln.py`` / ``uvit_multi_post_ln_v1.py``),
* ``autoencoder_kl.pth``: the Stable Diffusion KL autoencoder in the LDM key layout,
* ``caption_decoder.pth``: a GPT-2 prefix caption decoder (``libs/caption_decoder.py``), saved from DDP.

The CLIP text/image encoders and the GPT-2 tokenizer are not part of those files; thu-ml loads them from
the ``openai/clip-vit-large-patch14``, ``openai/clip-vit-base-patch32`` and ``gpt2`` hub repositories. Here the
caller passes LOCAL copies of those folders (nothing is ever downloaded).

The state-dict converters are pure functions (original tensors in, diffusers tensors and config out);
``convert_checkpoint`` does the file work and writes the folder atomically. Nothing from
``diffusers.pipelines.deprecated`` is imported: configs and weights are written directly.

Key map of the U-ViT (original -> diffusers ``UniDiffuserModel``)::

    patch_embed.proj.*            -> vae_img_in.proj.*  (and a copy in transformer.pos_embed.proj.*, unused)
    text_embed.* / text_out.*     -> text_in.* / text_out.*
    clip_img_embed.* / clip_img_out.* -> clip_img_in.* / clip_img_out.*
    time_{img,text}_embed.{0,2}.* -> timestep_{img,text}_embed.linear_{1,2}.*  (only with mlp_time_embed)
    pos_embed                     -> pos_embed
    token_embedding.weight        -> data_type_token_embedding.weight  (v1)
    pos_embed_token               -> data_type_pos_embed_token  (v1)
    in_blocks.i / mid_block       -> transformer.transformer_in_blocks.i / transformer.transformer_mid_block
    out_blocks.i                  -> transformer.transformer_out_blocks.i.block
    out_blocks.i.skip_linear.*    -> transformer.transformer_out_blocks.i.skip.skip_linear.*
    out_blocks.i.norm1.*          -> transformer.transformer_out_blocks.i.skip.norm.*
    <block>.attn.qkv.{weight,bias} -> <block>.attn1.to_{q,k,v}.*  (split in three along dim 0)
    <block>.attn.proj.*           -> <block>.attn1.to_out.0.*
    <block>.norm2.* / norm3.*     -> <block>.norm1.* / norm3.*
    <block>.mlp.fc1.* / fc2.*     -> <block>.ff.net.0.proj.* / ff.net.2.*
    norm.*                        -> transformer.norm_out.*
    decoder_pred.*                -> vae_img_out.*
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import diffusers
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    GPT2Tokenizer,
)

from unidiffuser.checkpoint import MODEL_INDEX

logger = logging.getLogger(__name__)

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

NUM_TEXT_TOKENS = 77
PREFIX_LENGTH = 77
DEFAULT_HEAD_DIM = 64
VAE_SCALING_FACTOR = 0.18215
GPT2_EOS_TOKEN = "<|EOS|>"
# thu-ml samples with DPM-Solver++ (order 3) on the Stable Diffusion "scaled linear" beta schedule.
SCHEDULER_KWARGS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "solver_order": 3,
    "num_train_timesteps": 1000,
}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_GPT2_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_UVIT_SHAPE_KEYS = (
    "patch_embed.proj.weight",
    "pos_embed",
    "text_embed.weight",
    "clip_img_embed.weight",
    "decoder_pred.weight",
    "mid_block.mlp.fc1.weight",
)
_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


# --------------------------------------------------------------------------------------------- loading


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _unwrap_state_dict(obj: object) -> StateDict:
    """Descend through ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and keep the tensors."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError("the checkpoint holds no tensors")
    return tensors


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> StateDict:
    """Remove ``prefix`` (DDP's ``module.``) when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_original_state_dict(path: str | os.PathLike) -> StateDict:
    """Load an original ``.pth`` (or ``.safetensors``) file on CPU without running pickled code."""
    path = _require_file(path, "checkpoint file")
    if path.suffix == ".safetensors":
        return strip_prefix(load_file(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} is not a plain tensor checkpoint (weights_only load failed): {exc}"
        ) from exc
    return strip_prefix(_unwrap_state_dict(obj))


# ---------------------------------------------------------------------------------------------- U-ViT


def _indices(keys: Sequence[str], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys that start with ``{prefix}{i}.``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


class _Taker:
    """Hands out original tensors once each, so unconverted leftovers can be reported."""

    def __init__(self, state_dict: StateDict, what: str):
        self.left = dict(state_dict)
        self.what = what

    def __contains__(self, key: str) -> bool:
        return key in self.left

    def __call__(self, key: str) -> Tensor:
        if key not in self.left:
            raise ValueError(f"{self.what}: expected key {key!r} is missing")
        return self.left.pop(key)

    def finish(self) -> None:
        if self.left:
            shown = ", ".join(sorted(self.left)[:10])
            raise ValueError(f"{self.what}: {len(self.left)} keys were not converted: {shown}")


def _move_linear(take: _Taker, out: StateDict, src: str, dst: str) -> None:
    """Move ``{src}.weight`` and ``{src}.bias`` (a Linear, LayerNorm or Conv2d) to ``dst``."""
    out[f"{dst}.weight"] = take(f"{src}.weight")
    out[f"{dst}.bias"] = take(f"{src}.bias")


def _convert_block(take: _Taker, out: StateDict, src: str, dst: str, *, skip: bool) -> None:
    """One post-LN U-ViT ``Block`` -> ``UniDiffuserBlock`` (plus its ``SkipBlock`` for out blocks)."""
    if skip:
        _move_linear(take, out, f"{src}.skip_linear", f"{dst}.skip.skip_linear")
        _move_linear(take, out, f"{src}.norm1", f"{dst}.skip.norm")
        dst = f"{dst}.block"
    qkv_weight = take(f"{src}.attn.qkv.weight")
    for name, chunk in zip("qkv", qkv_weight.chunk(3, dim=0), strict=True):
        out[f"{dst}.attn1.to_{name}.weight"] = chunk.clone()
    if f"{src}.attn.qkv.bias" in take:
        for name, chunk in zip("qkv", take(f"{src}.attn.qkv.bias").chunk(3, dim=0), strict=True):
            out[f"{dst}.attn1.to_{name}.bias"] = chunk.clone()
    _move_linear(take, out, f"{src}.attn.proj", f"{dst}.attn1.to_out.0")
    _move_linear(take, out, f"{src}.norm2", f"{dst}.norm1")
    _move_linear(take, out, f"{src}.norm3", f"{dst}.norm3")
    _move_linear(take, out, f"{src}.mlp.fc1", f"{dst}.ff.net.0.proj")
    _move_linear(take, out, f"{src}.mlp.fc2", f"{dst}.ff.net.2")


def _require_keys(state_dict: StateDict, keys: Sequence[str], what: str) -> None:
    """A clear error for the wrong file (e.g. the caption decoder passed as the U-ViT)."""
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(f"{what}: expected keys are missing: {', '.join(missing)} (is this the right file?)")


def _infer_heads(dim: int, num_attention_heads: int | None, what: str) -> int:
    if num_attention_heads is None:
        if dim % DEFAULT_HEAD_DIM:
            raise ValueError(
                f"{what}: width {dim} is not a multiple of {DEFAULT_HEAD_DIM}; pass the number of attention heads"
            )
        num_attention_heads = dim // DEFAULT_HEAD_DIM
    if num_attention_heads <= 0 or dim % num_attention_heads:
        raise ValueError(f"{what}: width {dim} is not divisible by {num_attention_heads} attention heads")
    return num_attention_heads


def _resolve_version(state_dict: StateDict, version: int | None) -> int:
    has_data_type = "token_embedding.weight" in state_dict or "pos_embed_token" in state_dict
    inferred = 1 if has_data_type else 0
    if version is None:
        return inferred
    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version}")
    if version != inferred:
        found = "has" if has_data_type else "lacks"
        raise ValueError(
            f"U-ViT checkpoint {found} the data-type token (token_embedding/pos_embed_token) of UniDiffuser-v1, "
            f"so it is not a v{version} checkpoint"
        )
    return version


def infer_uvit_config(
    state_dict: StateDict,
    *,
    version: int | None = None,
    num_attention_heads: int | None = None,
    num_text_tokens: int = NUM_TEXT_TOKENS,
) -> dict:
    """The ``UniDiffuserModel`` config of an original U-ViT state dict, read from its tensor shapes."""
    _require_keys(state_dict, _UVIT_SHAPE_KEYS, "U-ViT checkpoint")
    version = _resolve_version(state_dict, version)
    patch_weight = state_dict["patch_embed.proj.weight"]
    dim, in_channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    n_in = len(_indices(list(state_dict), "in_blocks."))
    n_out = len(_indices(list(state_dict), "out_blocks."))
    if n_in != n_out:
        raise ValueError(f"U-ViT checkpoint: {n_in} in_blocks but {n_out} out_blocks")
    mlp_hidden = state_dict["mid_block.mlp.fc1.weight"].shape[0]
    if mlp_hidden != 4 * dim:
        raise ValueError(
            f"U-ViT checkpoint: mlp width {mlp_hidden} is not 4 x {dim} (diffusers needs mlp_ratio 4)"
        )
    num_patches = state_dict["pos_embed"].shape[1] - (3 + num_text_tokens)
    side = round(max(num_patches, 0) ** 0.5)
    if num_patches <= 0 or side * side != num_patches:
        raise ValueError(
            f"U-ViT checkpoint: pos_embed has {state_dict['pos_embed'].shape[1]} tokens, which is not "
            f"3 + {num_text_tokens} text tokens + a square number of patches"
        )
    heads = _infer_heads(dim, num_attention_heads, "U-ViT checkpoint")
    patch_dim = state_dict["decoder_pred.weight"].shape[0]
    return {
        "text_dim": state_dict["text_embed.weight"].shape[1],
        "clip_img_dim": state_dict["clip_img_embed.weight"].shape[1],
        "num_text_tokens": num_text_tokens,
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": in_channels,
        "out_channels": patch_dim // (patch_size * patch_size),
        # thu-ml's "depth" (30 for U-ViT-H), as the published diffusers config writes it: num_layers // 2 in
        # blocks, one mid block, num_layers // 2 out blocks
        "num_layers": 2 * n_in,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "cross_attention_dim": None,
        "attention_bias": "mid_block.attn.qkv.bias" in state_dict,
        "sample_size": side * patch_size,
        "num_vector_embeds": None,
        "patch_size": patch_size,
        "activation_fn": "gelu",
        "num_embeds_ada_norm": None,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "upcast_attention": False,
        "norm_type": "layer_norm",
        "block_type": "unidiffuser",
        "pre_layer_norm": False,
        "use_timestep_embedding": "time_img_embed.0.weight" in state_dict,
        "norm_elementwise_affine": True,
        "use_patch_pos_embed": False,
        "ff_final_dropout": True,
        "use_data_type_embedding": version == 1,
    }


def convert_uvit_state_dict(
    original: StateDict,
    version: int | None = None,
    *,
    num_attention_heads: int | None = None,
    num_text_tokens: int = NUM_TEXT_TOKENS,
) -> tuple[StateDict, dict]:
    """Original U-ViT state dict -> (``UniDiffuserModel`` state dict, its config).

    ``version`` (0 or 1) is inferred from the data-type token keys when None, and checked against them otherwise.
    ``num_attention_heads`` is not recorded in the weights: None means width / 64 (24 heads for U-ViT-H, 1536 wide).
    """
    original = strip_prefix(original)
    config = infer_uvit_config(
        original, version=version, num_attention_heads=num_attention_heads, num_text_tokens=num_text_tokens
    )
    take = _Taker(original, "U-ViT checkpoint")
    out: StateDict = {}
    _move_linear(take, out, "patch_embed.proj", "vae_img_in.proj")
    # UTransformer2DModel owns a second, unused PatchEmbed; diffusers' own converter fills it with a copy.
    out["transformer.pos_embed.proj.weight"] = out["vae_img_in.proj.weight"].clone()
    out["transformer.pos_embed.proj.bias"] = out["vae_img_in.proj.bias"].clone()
    _move_linear(take, out, "text_embed", "text_in")
    _move_linear(take, out, "clip_img_embed", "clip_img_in")
    out["pos_embed"] = take("pos_embed")
    if config["use_data_type_embedding"]:
        out["data_type_token_embedding.weight"] = take("token_embedding.weight")
        out["data_type_pos_embed_token"] = take("pos_embed_token")
    if config["use_timestep_embedding"]:
        for kind in ("img", "text"):
            _move_linear(take, out, f"time_{kind}_embed.0", f"timestep_{kind}_embed.linear_1")
            _move_linear(take, out, f"time_{kind}_embed.2", f"timestep_{kind}_embed.linear_2")
    n_side = config["num_layers"] // 2
    for i in range(n_side):
        _convert_block(take, out, f"in_blocks.{i}", f"transformer.transformer_in_blocks.{i}", skip=False)
        _convert_block(take, out, f"out_blocks.{i}", f"transformer.transformer_out_blocks.{i}", skip=True)
    _convert_block(take, out, "mid_block", "transformer.transformer_mid_block", skip=False)
    _move_linear(take, out, "norm", "transformer.norm_out")
    _move_linear(take, out, "decoder_pred", "vae_img_out")
    _move_linear(take, out, "clip_img_out", "clip_img_out")
    _move_linear(take, out, "text_out", "text_out")
    take.finish()
    return out, config


# ------------------------------------------------------------------------------------ caption decoder


def convert_caption_decoder_state_dict(
    original: StateDict,
    *,
    prefix_length: int = PREFIX_LENGTH,
    n_head: int | None = None,
) -> tuple[StateDict, dict]:
    """Original caption decoder (``module.gpt.*``, ``module.{en,de}code_prefix.*``) -> ``UniDiffuserTextDecoder``.

    Keys starting with ``clip`` (training-time parts thu-ml's own loader skips: it loads non-strictly and
    asserts that every unexpected key starts with ``clip``) are dropped; any other unknown key is an error.
    ``n_head`` is not recorded in the weights: None means n_embd / 64 (12 for GPT-2 small). The tied GPT-2
    ``lm_head.weight`` is written as its own copy of ``wte`` so the file has no shared tensors and loads with
    both diffusers and strict ``load_state_dict``.
    """
    original = strip_prefix(original)
    out: StateDict = {}
    unknown, dropped = [], []
    for key, value in original.items():
        if key.endswith(_GPT2_IGNORED_SUFFIXES):
            continue  # causal-mask buffers saved by older transformers versions
        if key.startswith("clip"):
            dropped.append(key)
            continue
        if key.startswith("gpt."):
            out["transformer." + key[len("gpt.") :]] = value
        elif key.startswith(("encode_prefix.", "decode_prefix.")):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"caption decoder checkpoint: unrecognised keys: {', '.join(sorted(unknown)[:10])}")
    if dropped:
        logger.info(
            "caption decoder: dropped %d training-only keys (%s)",
            len(dropped),
            ", ".join(sorted(dropped)[:4]),
        )
    wte = out.get("transformer.transformer.wte.weight")
    if wte is None:
        raise ValueError("caption decoder checkpoint: expected key 'gpt.transformer.wte.weight' is missing")
    lm_head = out.get("transformer.lm_head.weight", wte)
    out["transformer.lm_head.weight"] = lm_head.clone() if lm_head.data_ptr() == wte.data_ptr() else lm_head
    config = _caption_decoder_config(out, prefix_length=prefix_length, n_head=n_head)
    return out, config


def _caption_decoder_config(state_dict: StateDict, *, prefix_length: int, n_head: int | None) -> dict:
    keys = ("transformer.transformer.wpe.weight", "transformer.transformer.h.0.mlp.c_fc.weight")
    _require_keys(state_dict, keys, "caption decoder checkpoint")
    vocab_size, n_embd = state_dict["transformer.transformer.wte.weight"].shape
    encode = state_dict.get("encode_prefix.weight")
    return {
        "prefix_length": prefix_length,
        "prefix_inner_dim": encode.shape[1] if encode is not None else n_embd,
        "prefix_hidden_dim": encode.shape[0] if encode is not None else None,
        "vocab_size": vocab_size,
        "n_positions": state_dict["transformer.transformer.wpe.weight"].shape[0],
        "n_embd": n_embd,
        "n_layer": len(_indices(list(state_dict), "transformer.transformer.h.")),
        "n_head": _infer_heads(n_embd, n_head, "caption decoder checkpoint"),
        "n_inner": state_dict["transformer.transformer.h.0.mlp.c_fc.weight"].shape[1],  # Conv1D: (in, out)
        "activation_function": "gelu_new",  # the GPT-2 ("gpt2") config thu-ml fine-tuned from
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


# ------------------------------------------------------------------------------------------------ VAE


def infer_vae_config(state_dict: StateDict, *, sample_size: int = 512) -> dict:
    """The ``AutoencoderKL`` config of an LDM-layout KL autoencoder state dict, read from its shapes."""
    keys = list(state_dict)
    levels = _indices(keys, "encoder.down.")
    if not levels:
        raise ValueError("autoencoder checkpoint: no 'encoder.down.*' keys (not an LDM KL autoencoder?)")
    if any(".attn." in k for k in keys if k.startswith(("encoder.down.", "decoder.up."))):
        raise ValueError(
            "autoencoder checkpoint: attention inside down/up levels is not supported by AutoencoderKL"
        )
    shape_keys = [f"encoder.down.{i}.block.0.conv1.weight" for i in levels]
    shape_keys += [
        "encoder.conv_in.weight",
        "decoder.conv_in.weight",
        "decoder.conv_out.weight",
        "post_quant_conv.weight",
    ]
    _require_keys(state_dict, shape_keys, "autoencoder checkpoint")
    block_out = [state_dict[key].shape[0] for key in shape_keys[: len(levels)]]
    z_channels = state_dict["decoder.conv_in.weight"].shape[1]
    embed_dim = state_dict["post_quant_conv.weight"].shape[1]
    if z_channels != embed_dim:
        raise ValueError(f"autoencoder checkpoint: z_channels {z_channels} != embed_dim {embed_dim}")
    return {
        "in_channels": state_dict["encoder.conv_in.weight"].shape[1],
        "out_channels": state_dict["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "layers_per_block": len(_indices(keys, "encoder.down.0.block.")),
        "act_fn": "silu",
        "latent_channels": z_channels,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": VAE_SCALING_FACTOR,
    }


def convert_vae_state_dict(original: StateDict, *, sample_size: int = 512) -> tuple[StateDict, dict]:
    """LDM-layout KL autoencoder (``autoencoder_kl.pth``) -> (``AutoencoderKL`` state dict, its config).

    The key renaming is diffusers' maintained ``convert_ldm_vae_checkpoint``; keys outside the autoencoder
    proper (e.g. a training ``loss.*``) are dropped with a warning.
    """
    original = strip_prefix(strip_prefix(original), "first_stage_model.")
    kept = {k: v for k, v in original.items() if k.startswith(_VAE_PREFIXES)}
    dropped = sorted(set(original) - set(kept))
    if dropped:
        logger.warning("autoencoder: ignoring %d non-autoencoder keys, e.g. %s", len(dropped), dropped[:5])
    config = infer_vae_config(kept, sample_size=sample_size)
    converted = convert_ldm_vae_checkpoint(kept, config)
    if len(converted) != len(kept):
        raise ValueError(f"autoencoder checkpoint: converted {len(converted)} of {len(kept)} tensors")
    return converted, config


# ------------------------------------------------------------------------------------------- writing


def _unshare(state_dict: StateDict) -> StateDict:
    """Contiguous tensors with no storage shared between entries (safetensors refuses shared tensors)."""
    seen: set[int] = set()
    result = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def write_model_folder(folder: Path, class_name: str, config: dict, state_dict: StateDict) -> None:
    """``config.json`` (diffusers style) + ``diffusion_pytorch_model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    full = {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **config}
    (folder / "config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    save_file(_unshare(state_dict), folder / WEIGHTS_NAME, metadata={"format": "pt"})


def _write_vae(folder: Path, state_dict: StateDict, config: dict) -> None:
    vae = diffusers.AutoencoderKL(**config)
    vae.load_state_dict(state_dict, strict=True)
    vae.save_pretrained(folder, safe_serialization=True)


def _write_scheduler(folder: Path) -> None:
    diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KWARGS).save_pretrained(folder)


def _write_clip_text(source: Path, out: Path) -> dict:
    """``text_encoder/`` + ``clip_tokenizer/`` from a local openai/clip-vit-large-patch14 folder."""
    model = CLIPTextModel.from_pretrained(source, local_files_only=True)
    model.save_pretrained(out / "text_encoder", safe_serialization=True)
    CLIPTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(out / "clip_tokenizer")
    return model.config.to_dict()


def _write_clip_image(source: Path, out: Path) -> dict:
    """``image_encoder/`` + ``clip_image_processor/`` from a local openai/clip-vit-base-patch32 folder."""
    preprocessor = _require_file(source / "preprocessor_config.json", "CLIP image preprocessor config")
    CLIPImageProcessorPil.from_pretrained(source, local_files_only=True)  # validate before copying verbatim
    (out / "clip_image_processor").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(preprocessor, out / "clip_image_processor" / "preprocessor_config.json")
    model = CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=True)
    model.save_pretrained(out / "image_encoder", safe_serialization=True)
    return model.config.to_dict()


def _write_gpt2_tokenizer(source: Path, out: Path, vocab_size: int) -> None:
    """``text_tokenizer/``: the GPT-2 tokenizer plus thu-ml's added ``<|EOS|>`` end token."""
    tokenizer = GPT2Tokenizer.from_pretrained(source, local_files_only=True)
    tokenizer.add_special_tokens({"eos_token": GPT2_EOS_TOKEN})
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"GPT-2 tokenizer in {source} has {len(tokenizer)} tokens with {GPT2_EOS_TOKEN}, but the caption "
            f"decoder's vocabulary has {vocab_size}: pass the tokenizer of the 'gpt2' model"
        )
    tokenizer.save_pretrained(out / "text_tokenizer")


def _check_consistency(unet: dict, decoder: dict, vae: dict, text: dict, image: dict) -> None:
    """The components must fit together the way UniDiffuserPipeline wires them."""
    latent_dim = decoder["prefix_hidden_dim"] or decoder["prefix_inner_dim"]
    checks = [
        (unet["text_dim"], latent_dim, "U-ViT text_dim vs caption decoder prefix_hidden_dim"),
        (
            text["hidden_size"],
            decoder["prefix_inner_dim"],
            "CLIP text hidden_size vs caption decoder prefix_inner_dim",
        ),
        (
            text["max_position_embeddings"],
            unet["num_text_tokens"],
            "CLIP text length vs U-ViT num_text_tokens",
        ),
        (image["projection_dim"], unet["clip_img_dim"], "CLIP image projection_dim vs U-ViT clip_img_dim"),
        (vae["latent_channels"], unet["in_channels"], "VAE latent_channels vs U-ViT in_channels"),
    ]
    problems = [f"{what}: {a} != {b}" for a, b, what in checks if a != b]
    if problems:
        raise ValueError("inputs do not fit together: " + "; ".join(problems))


def _prepare_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"output folder exists and is not empty: {output_dir} (use overwrite)")


def convert_checkpoint(
    *,
    uvit: str | os.PathLike,
    autoencoder: str | os.PathLike,
    caption_decoder: str | os.PathLike,
    clip_text_model: str | os.PathLike,
    clip_image_model: str | os.PathLike,
    gpt2_tokenizer: str | os.PathLike,
    output_dir: str | os.PathLike,
    version: int | None = None,
    num_attention_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete diffusers-layout UniDiffuser folder from thu-ml's original files; returns its path.

    ``clip_text_model``, ``clip_image_model`` and ``gpt2_tokenizer`` are LOCAL folders holding copies of the hub
    repositories ``openai/clip-vit-large-patch14``, ``openai/clip-vit-base-patch32`` and ``gpt2`` (only its
    ``vocab.json``/``merges.txt`` or ``tokenizer.json`` are needed). The folder is built next to ``output_dir``
    and renamed into place at the end, so a failed conversion leaves nothing half-written.
    """
    files = {
        "uvit": _require_file(uvit, "U-ViT checkpoint"),
        "autoencoder": _require_file(autoencoder, "autoencoder checkpoint"),
        "caption_decoder": _require_file(caption_decoder, "caption decoder checkpoint"),
    }
    clip_text_dir = _require_dir(clip_text_model, "CLIP text model")
    clip_image_dir = _require_dir(clip_image_model, "CLIP image model")
    gpt2_dir = _require_dir(gpt2_tokenizer, "GPT-2 tokenizer")
    output_dir = Path(output_dir).expanduser().resolve()
    _prepare_output(output_dir, overwrite)

    unet_sd, unet_config = convert_uvit_state_dict(
        load_original_state_dict(files["uvit"]), version, num_attention_heads=num_attention_heads
    )
    decoder_sd, decoder_config = convert_caption_decoder_state_dict(
        load_original_state_dict(files["caption_decoder"])
    )
    vae_sd, vae_config = convert_vae_state_dict(load_original_state_dict(files["autoencoder"]))
    # image side the U-ViT was trained for (512 px for UniDiffuser): the VAE's tiling size
    vae_config["sample_size"] = unet_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        text_config = _write_clip_text(clip_text_dir, staging)
        image_config = _write_clip_image(clip_image_dir, staging)
        _check_consistency(unet_config, decoder_config, vae_config, text_config, image_config)
        _write_gpt2_tokenizer(gpt2_dir, staging, decoder_config["vocab_size"])
        write_model_folder(staging / "unet", "UniDiffuserModel", unet_config, unet_sd)
        write_model_folder(staging / "text_decoder", "UniDiffuserTextDecoder", decoder_config, decoder_sd)
        _write_vae(staging / "vae", vae_sd, vae_config)
        _write_scheduler(staging / "scheduler")
        index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        _prepare_output(output_dir, overwrite)
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        os.rename(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "wrote UniDiffuser-v%d checkpoint to %s", int(unet_config["use_data_type_embedding"]), output_dir
    )
    return output_dir
