"""Write a complete, tiny, randomly initialised UniDiffuser checkpoint in the diffusers layout, fully offline.

Every file (configs, weights, tokenizer vocabularies) is produced here, so tests and the demo need no
network. The result loads through exactly the same code path as a real checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Tokenizer,
)

from unidiffuser.caption_decoder import CaptionDecoder
from unidiffuser.checkpoint import MODEL_INDEX
from unidiffuser.uvit import UViT, UViTConfig

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
GPT2_EOS = "<|endoftext|>"
TINY_RESOLUTION = 64


def byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: every byte mapped to a printable unicode character (GPT-2 / CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (every byte, alone and word-final), no merges, 77 tokens."""
    chars = list(byte_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [CLIP_BOS, CLIP_EOS]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def tiny_gpt2_tokenizer() -> GPT2Tokenizer:
    """A byte-level GPT-2 tokenizer (256 bytes + end of text), no merges."""
    tokens = list(byte_to_unicode().values()) + [GPT2_EOS]
    return GPT2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def tiny_uvit_config(version: int = 1) -> UViTConfig:
    """A 3-layer, 32-wide U-ViT over 8x8x4 latents (64 px images), with the data-type token for v1."""
    return UViTConfig(
        text_dim=8,
        clip_img_dim=16,
        num_text_tokens=77,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        activation_fn="gelu",
        attention_bias=False,
        use_data_type_embedding=version == 1,
    )


def scheduler_config() -> dict:
    """thu-ml's sampler as a diffusers DPM-Solver++ (order 3) on the Stable Diffusion beta schedule."""
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        solver_order=3,
        num_train_timesteps=1000,
    )
    return dict(scheduler.config)


def _save_module(module: torch.nn.Module, config: dict, folder: Path, weights_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, folder / weights_name)


def _init_uvit(model: UViT, generator: torch.Generator) -> None:
    """Small random weights with enough spread that outputs depend on every input."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02, generator=generator)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.3 / max(1, param.shape[-1]) ** 0.5 * 2, generator=generator)


def write_tiny_checkpoint(
    path: str | os.PathLike, *, version: int = 1, seed: int = 0, uvit_config: UViTConfig | None = None
) -> Path:
    """Write a full tiny checkpoint (v0 or v1) to ``path`` and return it.

    ``uvit_config`` replaces the tiny U-ViT (e.g. a wider one for benchmarks); its text_dim, clip_img_dim,
    latent size and channels must stay those of the tiny encoders (8, 16, 8, 4).
    """
    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    clip_tokenizer = tiny_clip_tokenizer()
    clip_tokenizer.save_pretrained(root / "clip_tokenizer")
    gpt2_tokenizer = tiny_gpt2_tokenizer()
    gpt2_tokenizer.save_pretrained(root / "text_tokenizer")

    text_config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    vision_config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(vision_config).save_pretrained(root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip_image_processor"
    )

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        # narrow at full resolution: as in the real model, the U-ViT (not the VAE) should dominate the cost
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(root / "vae")

    uvit_config = uvit_config or tiny_uvit_config(version)
    uvit = UViT(uvit_config)
    _init_uvit(uvit, generator)
    _save_module(uvit, uvit_config.to_dict(), root / "unet", "diffusion_pytorch_model.safetensors")

    decoder_config = {
        "_class_name": "UniDiffuserTextDecoder",
        "prefix_length": 77,
        "prefix_inner_dim": text_config.hidden_size,
        "prefix_hidden_dim": uvit_config.text_dim,
        "vocab_size": len(gpt2_tokenizer),
        "n_positions": 160,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "n_inner": None,
        "activation_function": "gelu_new",
        "bos_token_id": gpt2_tokenizer.eos_token_id,
        "eos_token_id": gpt2_tokenizer.eos_token_id,
    }
    decoder = CaptionDecoder(decoder_config)
    # lm_head is tied to the token embedding; it is stored as its own copy (safetensors refuses shared tensors)
    _save_module(decoder, decoder_config, root / "text_decoder", "diffusion_pytorch_model.safetensors")

    (root / "scheduler").mkdir(exist_ok=True)
    config = {"_class_name": "DPMSolverMultistepScheduler", **scheduler_config()}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return root


def write_tiny_clip(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """A tiny random CLIP (text + vision towers) in the openai/clip-vit-* folder layout, for scoring tests."""
    root = Path(path)
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root)
    tokenizer.save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root
    )
    return root
