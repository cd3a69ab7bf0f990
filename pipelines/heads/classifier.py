"""Image-classifier heads: a transformers ``AutoModelForImageClassification`` folder with its image processor.

Watermark detectors and NSFW classifiers are commonly published this way. The score is the probability of
one label of ``config.id2label``: softmax over the logits, or the label's sigmoid for a model whose
``problem_type`` is ``multi_label_classification``. The image processor is transformers' PIL backend, named
explicitly (as ``unidiffuser.clip_processor.load_clip_processor`` does for CLIP): the same pixels on every
machine, with or without torchvision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from pipelines.heads.base import HeadError

if TYPE_CHECKING:
    import torch

MULTI_LABEL = "multi_label_classification"


def model_labels(config: Mapping[str, Any]) -> list[str]:
    """A classifier config's label names in class order (``id2label``; its JSON keys are strings)."""
    id2label = config.get("id2label") or {}
    return [str(label) for _, label in sorted(id2label.items(), key=lambda item: int(item[0]))]


def label_index(labels: list[str], label: str, where: str) -> int:
    """Class index of ``label``; an unknown label is an error naming it and listing the labels."""
    if label not in labels:
        raise HeadError(
            f"label {label!r} is not a label of the classifier at {where} (labels: {', '.join(labels)})"
        )
    return labels.index(label)


class ImageClassifierHead:
    """An image head: the probability of one label of an image classifier."""

    input: Literal["image"] = "image"

    def __init__(
        self,
        folder: Path,
        *,
        name: str,
        label: str,
        identity: str,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        # torch and transformers' image classes are imported here, not with the module: validating a spec
        # reads the label names below (``model_labels``) and should not pay for importing them
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        kwargs: dict[str, Any] = {"local_files_only": True}
        if not (folder / "config.json").is_file():
            raise HeadError(
                f"head {name!r}: no config.json in {folder} (kind 'classifier' is a transformers folder)"
            )
        if not (folder / "preprocessor_config.json").is_file():
            raise HeadError(f"head {name!r}: no preprocessor_config.json (the image processor) in {folder}")
        self.name = name
        self.identity = identity
        self.label = label
        self.device = torch.device(device)
        self.batch_size = batch_size
        config = json.loads((folder / "config.json").read_text())
        self.labels = model_labels(config)
        self.index = label_index(self.labels, label, str(folder / "config.json"))  # before loading weights
        self.multi_label = config.get("problem_type") == MULTI_LABEL
        self.model = AutoModelForImageClassification.from_pretrained(folder, **kwargs).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, backend="pil", **kwargs)

    def score_images(self, images: list[np.ndarray]) -> np.ndarray:
        """n uint8 (H, W, 3) RGB images -> (n,) float32 probabilities of the head's label."""
        import torch

        scores = []
        for start in range(0, len(images), self.batch_size):
            part = [
                Image.fromarray(np.asarray(i, dtype=np.uint8))
                for i in images[start : start + self.batch_size]
            ]
            pixels = self.processor(images=part, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                logits = self.model(pixel_values=pixels).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            scores.append(probs[:, self.index].cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)
