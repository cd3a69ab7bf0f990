"""Invisible watermark in the pixels of a generated image: ``invisible-watermark``'s DWT-DCT method, the one
Stable Diffusion's reference scripts and diffusers' SDXL pipeline apply, with a payload derived from the job.

    payload = watermark_payload("job fingerprint or name")   # 6 bytes of sha256 -> 48 bits
    marked = embed_watermark(pixels, payload)               # uint8 RGB HxWx3 in, same shape out
    watermark_match(marked, payload)                        # 1.0; about 0.5 on an unmarked image
    is_watermarked(marked, payload)                         # match >= DETECTION_THRESHOLD

What the package really does (imwatermark 0.2.0, ``watermark.py`` and ``maxDct.py``), made explicit here:

- **Size**: it refuses images under 256x256 pixels in area (``r*c < 256*256``, ``RuntimeError``); the bits are
  repeated over 4x4 blocks of the Haar LL band (one block per 8x8 pixels), so every bit needs a block:
  ``(H//8) * (W//8) >= bits``. ``WatermarkError`` names both limits before the package is called. The demo
  model's 64 px images are below the limit: they must be upscaled to be marked at all.
- **Channels**: it takes OpenCV's BGR order (``cv2.COLOR_BGR2YUV``) and embeds in the U channel only
  (scales ``[0, 36, 36]``, the loop covers channels 0 and 1). Arrays here are RGB: they are flipped on the way in
  and out, so marks read the same as Stable Diffusion's (which flips RGB to BGR the same way).
- **Bits**: any length; read back as bytes, so payloads are whole bytes. A bit is the mean vote of its blocks.
- **Saturation**: the embedded U values are written back into a uint8 array without clipping, so images whose
  chroma sits at the edge of the range (pure white, blue, yellow) do not keep the mark. ``embed_watermark``
  therefore reads its own result back and raises ``WatermarkError`` unless every bit survives.
- **Unmarked images** read as near-constant bits (flat regions decode to 0), so a payload is compared bit by
  bit (``watermark_match``) and called present only from ``DETECTION_THRESHOLD`` (44 of 48 bits; a uniformly
  random 48-bit read reaches it with probability below 1e-9).

**Default: off in job specs; opt in.** The XMP mark is the machine-readable marking (Art. 50(2)) every image
gets; the watermark is a second, weaker signal with costs a dataset publisher should choose knowingly:
it changes the model's pixels (the written image is no longer the engine's bitwise output, and a model trained
on the dataset sees the pattern), it cannot mark images under 256x256 (the demo model's) nor saturated ones,
and DWT-DCT is not robust: ``bench/provenance.py`` measures it surviving mild JPEG re-encoding but not
resizing or cropping (docs/benchmarks.md, "Provenance marks"). A spec that wants it for published
high-resolution images turns it on with a payload identity.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

METHOD = "dwtDct"
MIN_PIXELS = 256 * 256  # imwatermark's own limit on rows * columns
DEFAULT_PAYLOAD_BYTES = 6
DETECTION_THRESHOLD = 44 / 48


class WatermarkError(ValueError):
    """The image cannot carry (or did not keep) the watermark; the message says why."""


def watermark_payload(identity: str, n_bytes: int = DEFAULT_PAYLOAD_BYTES) -> bytes:
    """The first ``n_bytes`` (1-32) of ``sha256(identity)``: a payload that names a job without revealing it."""
    if not 1 <= n_bytes <= 32:
        raise ValueError(f"watermark payload must be 1 to 32 bytes, got {n_bytes}")
    return hashlib.sha256(identity.encode("utf-8")).digest()[:n_bytes]


def _imwatermark() -> Any:
    """The invisible-watermark module, imported on first use (the ``provenance`` extra; pulls in OpenCV)."""
    import imwatermark  # type: ignore[import-untyped]

    return imwatermark


def _check(pixels: np.ndarray, bits: int) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise WatermarkError(f"expected a uint8 HxWx3 RGB array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    if height * width < MIN_PIXELS:
        raise WatermarkError(
            f"image of {width}x{height} is too small for the {METHOD} watermark: it needs at least "
            f"{MIN_PIXELS} pixels (256x256)"
        )
    blocks = (height // 8) * (width // 8)
    if blocks < bits:
        raise WatermarkError(
            f"image of {width}x{height} has {blocks} 8x8 blocks, fewer than the {bits} payload bits"
        )


def embed_watermark(pixels: np.ndarray, payload: bytes) -> np.ndarray:
    """``pixels`` (uint8 RGB HxWx3) with ``payload`` embedded; ``WatermarkError`` if it cannot be, or if the
    image does not keep every bit (read back at once)."""
    pixels = np.asarray(pixels)
    if not payload:
        raise ValueError("watermark payload is empty")
    _check(pixels, 8 * len(payload))
    encoder = _imwatermark().WatermarkEncoder()
    encoder.set_watermark("bytes", payload)
    bgr = encoder.encode(np.ascontiguousarray(pixels[:, :, ::-1]), METHOD)
    marked = np.ascontiguousarray(bgr[:, :, ::-1])
    kept = _bit_agreement(detect_watermark(marked, 8 * len(payload)), payload)
    if kept < 8 * len(payload):
        raise WatermarkError(
            f"image does not keep the watermark: {kept} of {8 * len(payload)} bits read back "
            "(saturated colours leave the DWT-DCT no room)"
        )
    return marked


def detect_watermark(pixels: np.ndarray, payload_bits: int) -> bytes:
    """The ``payload_bits`` (a multiple of 8) read from ``pixels`` (uint8 RGB HxWx3), whether marked or not."""
    if payload_bits <= 0 or payload_bits % 8:
        raise ValueError(f"payload_bits must be a positive multiple of 8, got {payload_bits}")
    pixels = np.asarray(pixels)
    _check(pixels, payload_bits)
    decoder = _imwatermark().WatermarkDecoder("bytes", payload_bits)
    return bytes(decoder.decode(np.ascontiguousarray(pixels[:, :, ::-1]), METHOD))


def _bit_agreement(found: bytes, payload: bytes) -> int:
    same = np.unpackbits(np.frombuffer(found, np.uint8)) == np.unpackbits(np.frombuffer(payload, np.uint8))
    return int(same.sum())


def watermark_match(pixels: np.ndarray, payload: bytes) -> float:
    """The fraction of ``payload``'s bits read back from ``pixels``: 1.0 when intact, about 0.5 by chance."""
    return _bit_agreement(detect_watermark(pixels, 8 * len(payload)), payload) / (8 * len(payload))


def is_watermarked(pixels: np.ndarray, payload: bytes, threshold: float = DETECTION_THRESHOLD) -> bool:
    """Whether ``pixels`` carry ``payload``: at least ``threshold`` of its bits read back."""
    return watermark_match(pixels, payload) >= threshold
