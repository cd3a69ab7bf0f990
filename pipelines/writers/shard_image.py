"""Which image is written with a record: the one decision, made here for every stage that needs it.

Modes that generate an image write it. Captioning (``i2t``) writes, by ``output.caption_image``, the input
file as read (``source``: JPEG, PNG and WebP unchanged, other formats re-encoded at their own size), the
resized, center-cropped model input the caption was made from (``model_input``), or no image (``none``).
Text-only modes write no image.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import numpy as np

from pipelines import records as r
from pipelines.pixels import from_bytes
from pipelines.writers.encode import EncodedImage, encode_image, source_image
from unidiffuser.config import Mode


class CaptionImage(StrEnum):
    """``output.caption_image``: the image written with each caption of an ``i2t`` job."""

    SOURCE = "source"
    MODEL_INPUT = "model_input"
    NONE = "none"

    def keeps_source(self, mode: Mode) -> bool:
        """Whether preprocess must keep each input file's bytes for the shards."""
        return mode == Mode.I2T and self == CaptionImage.SOURCE


def shard_image(
    row: Mapping[str, Any], mode: Mode, policy: CaptionImage, fmt: str, quality: int
) -> EncodedImage | None:
    """The encoded image written with ``row`` (a plain dict of record columns), or None."""
    if mode.makes_image:
        pixels = row.get(r.OUT_PIXELS)
        return None if pixels is None else encode_image(_array(pixels), fmt, quality)
    if mode != Mode.I2T or policy == CaptionImage.NONE:
        return None
    if policy == CaptionImage.SOURCE:
        data = row.get(r.SOURCE_IMAGE)
        return None if data is None else source_image(data, fmt, quality)
    pixels = row.get(r.PIXELS)
    return None if pixels is None else encode_image(_array(pixels), fmt, quality)


def _array(pixels: bytes | np.ndarray) -> np.ndarray:
    return pixels if isinstance(pixels, np.ndarray) else from_bytes(pixels)
