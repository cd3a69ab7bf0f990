"""Output image bytes: a uint8 ``HxWx3`` RGB array encoded to JPEG, PNG or WebP, or an input file kept as it is."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from unidiffuser.inputs import decode_image, to_rgb

# file extension -> PIL format name
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_ALIASES = {"jpeg": "jpg"}
IMAGE_FORMATS = tuple(_PIL_FORMATS)
LOSSLESS = frozenset({"png"})  # WebP is written lossy (with ``quality``), as JPEG is
_EXTENSIONS = {pil: ext for ext, pil in _PIL_FORMATS.items()}


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    format: str  # file extension: "jpg", "png" or "webp"
    width: int
    height: int
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    """What ``data`` decodes to, where that is known without decoding it: the array a lossless format (PNG)
    was encoded from. None for lossy formats and for files kept as they were read."""


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
    lossless = pixels if ext in LOSSLESS else None
    return EncodedImage(buffer.getvalue(), ext, int(width), int(height), lossless)


def source_image(data: bytes, fmt: str = "jpg", quality: int = 95) -> EncodedImage:
    """An input file for the shards: JPEG, PNG and WebP bytes unchanged; any other format (GIF, BMP, TIFF, ...)
    decoded, oriented, converted to RGB and encoded as ``fmt`` at its own size, so every shard image is one
    of the three formats webdataset and clip-retrieval readers expect."""
    with Image.open(io.BytesIO(data)) as header:  # the header only: format and size
        ext, (width, height) = _EXTENSIONS.get(header.format or ""), header.size
    if ext is not None:
        return EncodedImage(bytes(data), ext, int(width), int(height))
    # the job's pixel limit was enforced when the record was prepared; this decodes what passed it
    rgb, _ = to_rgb(decode_image(data, max_pixels=sys.maxsize))
    return encode_image(np.asarray(rgb, dtype=np.uint8), fmt, quality)
