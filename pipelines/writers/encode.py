"""Encode a uint8 ``HxWx3`` RGB array to JPEG, PNG or WebP bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# file extension -> PIL format name
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_ALIASES = {"jpeg": "jpg"}
IMAGE_FORMATS = tuple(_PIL_FORMATS)


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    format: str  # file extension: "jpg", "png" or "webp"
    width: int
    height: int


def image_format(name: str) -> str:
    """The canonical extension for a format name (``jpeg`` -> ``jpg``); ValueError if unsupported."""
    ext = _ALIASES.get(name.lower().lstrip("."), name.lower().lstrip("."))
    if ext not in _PIL_FORMATS:
        raise ValueError(f"unsupported image format {name!r} (expected one of {', '.join(IMAGE_FORMATS)})")
    return ext


def encode_image(pixels: np.ndarray, fmt: str = "jpg", quality: int = 95) -> EncodedImage:
    """Encode ``pixels`` (uint8, ``HxWx3``); ``quality`` (1-100) applies to JPEG and WebP."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 array, got {pixels.dtype} {pixels.shape}")
    ext = image_format(fmt)
    options: dict = {"quality": int(quality)} if ext in ("jpg", "webp") else {}
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=_PIL_FORMATS[ext], **options)
    height, width = pixels.shape[:2]
    return EncodedImage(buffer.getvalue(), ext, int(width), int(height))
