"""Load a local UniDiffuser checkpoint folder into its model components (torch, diffusers, transformers).

Finding, copying, pinning and checking a checkpoint is ``unidiffuser.checkpoint``, which imports none of these
libraries, so ``validate`` and the pre-flight checks stay light; the engine actors load through this module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from safetensors.torch import load_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    GPT2Tokenizer,
)

from unidiffuser.caption_decoder import CaptionDecoder
from unidiffuser.checkpoint import COMPONENTS, WEIGHT_FILES, CheckpointError, component_dir, read_config
from unidiffuser.locations import describe_error
from unidiffuser.uvit import UViT, UViTConfig


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            try:
                if path.suffix == ".safetensors":
                    return load_file(path)
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a damaged file: name it instead of the loader's internals
                raise CheckpointError(f"cannot load weights {path}: {describe_error(exc)}") from None
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def load_uvit(root: Path) -> UViT:
    """The U-ViT from ``unet/`` (diffusers ``UniDiffuserModel`` layout)."""
    folder = component_dir(root, "unet")
    model = UViT(UViTConfig.from_dict(read_config(folder)))
    model.load_state_dict(_load_weights(folder), strict=True)
    return model


def load_caption_decoder(root: Path) -> CaptionDecoder:
    """The GPT-2 caption decoder from ``text_decoder/``."""
    folder = component_dir(root, "text_decoder")
    model = CaptionDecoder(read_config(folder))
    model.load_state_dict(CaptionDecoder.clean_state_dict(_load_weights(folder)), strict=True)
    model.transformer.tie_weights()
    return model


@dataclass
class Components:
    """Every part of a UniDiffuser checkpoint, loaded on CPU in float32."""

    uvit: UViT
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    clip_tokenizer: CLIPTokenizer
    image_encoder: CLIPVisionModelWithProjection
    clip_image_processor: CLIPImageProcessorPil
    text_decoder: CaptionDecoder
    text_tokenizer: GPT2Tokenizer
    scheduler_config: dict
    path: Path

    @property
    def resolution(self) -> int:
        """Image side in pixels that the U-ViT was trained for."""
        return self.uvit.config.sample_size * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_components(root: str | os.PathLike) -> Components:
    """Load all components of the checkpoint folder ``root`` (already local: see ``resolve_checkpoint``)."""
    root = Path(root)
    for name in COMPONENTS:
        component_dir(root, name)
    kwargs = {"local_files_only": True}
    tokenizer = CLIPTokenizer.from_pretrained(root / "clip_tokenizer", **kwargs)
    if tokenizer.model_max_length > 10_000:  # an unset max length: UniDiffuser is trained on 77 tokens
        tokenizer.model_max_length = 77
    scheduler_config = read_config(root / "scheduler", "scheduler_config.json")
    DPMSolverMultistepScheduler.from_config(scheduler_config)  # validate early
    return Components(
        uvit=load_uvit(root),
        vae=AutoencoderKL.from_pretrained(root / "vae", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **kwargs),
        clip_tokenizer=tokenizer,
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder", **kwargs),
        clip_image_processor=CLIPImageProcessorPil.from_pretrained(root / "clip_image_processor", **kwargs),
        text_decoder=load_caption_decoder(root),
        text_tokenizer=GPT2Tokenizer.from_pretrained(root / "text_tokenizer", **kwargs),
        scheduler_config=scheduler_config,
        path=root,
    )
