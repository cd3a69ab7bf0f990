"""Write the trained family in the diffusers folder layout of ``unidiffuser.tiny.write_tiny_checkpoint``, plus a
``clip/`` folder for the pipeline's CLIP scorer (the ``openai/clip-vit-*`` layout of ``tiny.write_tiny_clip``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer, GPT2Tokenizer

from unidiffuser.caption_decoder import CaptionDecoder
from unidiffuser.tiny import MODEL_INDEX
from unidiffuser.uvit import UViT

WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_module(module: torch.nn.Module, config: dict, folder: Path) -> None:
    """config.json + safetensors weights (tied tensors stored as separate copies, as safetensors needs)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().float().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, folder / WEIGHTS)


def save_tokenizer(tokenizer: CLIPTokenizer | GPT2Tokenizer, folder: Path) -> None:
    """``save_pretrained`` plus the classic ``vocab.json`` / ``merges.txt`` pair (loadable on their own)."""
    tokenizer.save_pretrained(folder)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def image_processor(resolution: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution}
    )


def save_tokenizers(root: Path, clip_tokenizer: CLIPTokenizer, gpt2_tokenizer: GPT2Tokenizer) -> None:
    save_tokenizer(clip_tokenizer, root / "clip_tokenizer")
    save_tokenizer(gpt2_tokenizer, root / "text_tokenizer")


def save_vae(root: Path, vae: AutoencoderKL) -> None:
    vae.to("cpu").save_pretrained(root / "vae", safe_serialization=True)


def save_clip(
    root: Path, clip: CLIPModel, text_encoder, image_encoder, tokenizer: CLIPTokenizer, resolution: int
) -> None:
    """The scorer (``clip/``), UniDiffuser's ``text_encoder/``, ``image_encoder/`` and ``clip_image_processor/``."""
    processor = image_processor(resolution)
    clip.to("cpu").save_pretrained(root / "clip")
    save_tokenizer(tokenizer, root / "clip")
    processor.save_pretrained(root / "clip")
    text_encoder.to("cpu").save_pretrained(root / "text_encoder")
    image_encoder.to("cpu").save_pretrained(root / "image_encoder")
    processor.save_pretrained(root / "clip_image_processor")


def save_decoder(root: Path, decoder: CaptionDecoder) -> None:
    save_module(decoder, decoder.config, root / "text_decoder")


def save_uvit(root: Path, uvit: UViT) -> None:
    save_module(uvit, uvit.config.to_dict(), root / "unet")


def save_scheduler(root: Path, scheduler_config: dict) -> None:
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "DPMSolverMultistepScheduler", **scheduler_config}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def save_model_index(root: Path) -> None:
    """Written last: a folder with ``model_index.json`` is complete."""
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
