"""Write complete, randomly initialised UniDiffuser checkpoints in the diffusers layout, fully offline.

Two sizes: tiny (tests, the demo's ``--model tiny``) and full (UniDiffuser-v1's dimensions: U-ViT-H, the
Stable Diffusion VAE, CLIP ViT-L/14 text and ViT-B/32 image encoders, a GPT-2-small caption decoder; for GPU
benchmarks, about 5 GB). Every file (configs, weights, tokenizer vocabularies) is produced here, so nothing
needs the network; the vocabularies stay byte-level at both sizes. The result loads through exactly the same
code path as a real checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
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


def uvit_h_config(version: int = 1) -> UViTConfig:
    """thu-ml's U-ViT-H: width 1536 (24 heads of 64), depth 30, 64x64x4 latents (512 px), patch 2,
    77 text tokens of dim 64, CLIP image dim 512; the data-type token for v1."""
    return UViTConfig(
        text_dim=64, clip_img_dim=512, num_text_tokens=77, num_attention_heads=24, attention_head_dim=64,
        in_channels=4, out_channels=4, num_layers=30, sample_size=64, patch_size=2, activation_fn="gelu",
        attention_bias=False, use_data_type_embedding=version == 1,
    )  # fmt: skip


@dataclass(frozen=True)
class CheckpointSizes:
    """The widths and depths of every component of a random checkpoint (the U-ViT's come from ``uvit``)."""

    uvit: UViTConfig
    text_hidden: int  # CLIP text encoder
    text_layers: int
    text_heads: int
    vision_image_size: int  # CLIP image encoder
    vision_patch: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_groups: int
    decoder_embd: int  # GPT-2 caption decoder
    decoder_layers: int
    decoder_heads: int
    decoder_positions: int
    clip_mlp_ratio: int = 4  # CLIP MLP width / hidden width (both encoders)

    @property
    def resolution(self) -> int:
        return self.uvit.sample_size * 2 ** (len(self.vae_channels) - 1)

    @classmethod
    def tiny(cls, version: int = 1) -> CheckpointSizes:
        """Seconds to write and run on a CPU: the U-ViT dominates, as in the real model."""
        return cls(
            uvit=tiny_uvit_config(version), text_hidden=32, text_layers=2, text_heads=2,
            vision_image_size=32, vision_patch=8, vision_hidden=32, vision_layers=2, vision_heads=2,
            # narrow at full resolution: as in the real model, the U-ViT (not the VAE) should dominate the cost
            vae_channels=(8, 8, 16, 16), vae_layers_per_block=1, vae_groups=4,
            decoder_embd=32, decoder_layers=2, decoder_heads=2, decoder_positions=160, clip_mlp_ratio=2,
        )  # fmt: skip

    @classmethod
    def full(cls, version: int = 1) -> CheckpointSizes:
        """UniDiffuser-v1's dimensions (512 px), for benchmarks on a GPU."""
        return cls(
            uvit=uvit_h_config(version), text_hidden=768, text_layers=12, text_heads=12,
            vision_image_size=224, vision_patch=32, vision_hidden=768, vision_layers=12, vision_heads=12,
            vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, vae_groups=32,
            decoder_embd=768, decoder_layers=12, decoder_heads=12, decoder_positions=1024,
        )  # fmt: skip


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
    sizes = CheckpointSizes.tiny(version)
    return write_random_checkpoint(
        path, replace(sizes, uvit=uvit_config) if uvit_config else sizes, seed=seed
    )


def write_random_checkpoint(path: str | os.PathLike, sizes: CheckpointSizes, *, seed: int = 0) -> Path:
    """Write a complete random checkpoint of ``sizes`` to ``path`` and return it (v1 if the U-ViT has the
    data-type token, else v0)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    uvit_config = sizes.uvit

    clip_tokenizer = tiny_clip_tokenizer()
    clip_tokenizer.save_pretrained(root / "clip_tokenizer")
    gpt2_tokenizer = tiny_gpt2_tokenizer()
    gpt2_tokenizer.save_pretrained(root / "text_tokenizer")

    text_config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.clip_mlp_ratio * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=77,
        projection_dim=uvit_config.clip_img_dim,
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    vision_config = CLIPVisionConfig(
        image_size=sizes.vision_image_size, patch_size=sizes.vision_patch, hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.clip_mlp_ratio * sizes.vision_hidden, num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads, projection_dim=uvit_config.clip_img_dim,
    )  # fmt: skip
    CLIPVisionModelWithProjection(vision_config).save_pretrained(root / "image_encoder")
    side = sizes.vision_image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(root / "clip_image_processor")

    levels = len(sizes.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=sizes.vae_channels,
        layers_per_block=sizes.vae_layers_per_block,
        latent_channels=uvit_config.in_channels,
        norm_num_groups=sizes.vae_groups,
        sample_size=sizes.resolution,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(root / "vae")

    uvit = UViT(uvit_config)
    _init_uvit(uvit, generator)
    _save_module(uvit, uvit_config.to_dict(), root / "unet", "diffusion_pytorch_model.safetensors")
    del uvit

    decoder_config = {
        "_class_name": "UniDiffuserTextDecoder",
        "prefix_length": 77,
        "prefix_inner_dim": text_config.hidden_size,
        "prefix_hidden_dim": uvit_config.text_dim,
        "vocab_size": len(gpt2_tokenizer),
        "n_positions": sizes.decoder_positions,
        "n_embd": sizes.decoder_embd,
        "n_layer": sizes.decoder_layers,
        "n_head": sizes.decoder_heads,
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
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root
    )
    return root
