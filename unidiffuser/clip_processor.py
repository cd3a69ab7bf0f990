"""A CLIP model folder's processor (tokenizer + image processor), with transformers alone: a CLIP scorer loads
it without the diffusers stack that ``unidiffuser.components`` needs for a whole checkpoint."""

from __future__ import annotations

import os

from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer


def load_clip_processor(folder: str | os.PathLike) -> CLIPProcessor:
    """A CLIP folder's tokenizer and image processor. The image processor is transformers' PIL backend,
    named explicitly: the same pixels on every machine, with or without torchvision installed."""
    kwargs = {"local_files_only": True}
    return CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(folder, **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(folder, **kwargs),
    )
