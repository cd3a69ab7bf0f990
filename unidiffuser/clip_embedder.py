"""A CLIP model folder on one device: L2-normalised image and text embeddings, in batches.

The one way this project turns pixels and texts into CLIP embeddings: the pipeline's score stage, the shapes
model's quality report, the benchmarks and the dedup tests all use it, so their embeddings agree (exactly, at
the same batch size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel

from unidiffuser.clip_processor import load_clip_processor


class ClipEmbedder:
    """``folder``'s CLIP model and processor (transformers), ``batch_size`` inputs per forward."""

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.processor = load_clip_processor(folder)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """The size of the (projected) embeddings."""
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def images(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """n uint8 (H, W, 3) RGB images -> (n, dim) float32, each row of norm 1; ``batch_size`` images per
        forward (default: the embedder's)."""
        size = batch_size or self.batch_size
        chunks = []
        for start in range(0, len(images), size):
            part = [Image.fromarray(i) for i in images[start : start + size]]
            inputs = self.processor(images=part, return_tensors="pt").to(self.device)
            chunks.append(_features(self.model.get_image_features(**inputs)))
        return _normalise(torch.cat(chunks)) if chunks else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """One row per text, (n, dim) float32 of norm 1; a text repeated (samples of one prompt) is encoded
        once; ``batch_size`` texts per forward (default: the embedder's)."""
        size = batch_size or self.batch_size
        unique = list(dict.fromkeys(texts))
        chunks = []
        for start in range(0, len(unique), size):
            inputs = self.processor(
                text=unique[start : start + size],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            chunks.append(_features(self.model.get_text_features(**inputs)))
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        row_of = {text: row for row, text in enumerate(unique)}
        return _normalise(torch.cat(chunks))[[row_of[text] for text in texts]]


def _features(output: torch.Tensor | Any) -> torch.Tensor:
    """transformers 5 returns the projected features as ``pooler_output``; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
