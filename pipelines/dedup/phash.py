"""Perceptual hashes of images: 64-bit pHash (``imagehash.phash``, hash size 8) as 16 hex characters.

The pHash of a picture survives re-encoding (JPEG quality), resizing and small shifts, and changes with its
content, so a small Hamming distance between two hashes confirms that two images with close embeddings are
the same picture (``hamming``; ``hamming_many`` compares arrays of hashes as ``uint64``, see ``phash_ints``).
Bytes are decoded with PIL and turned upright by their EXIF orientation first, as the pipeline's
preprocessing does, so a rotated-by-EXIF copy hashes like the picture it shows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

HASH_SIZE = 8  # 8 x 8 DCT bits = 64-bit hash
HEX_LENGTH = HASH_SIZE * HASH_SIZE // 4


def phash(image: bytes | np.ndarray | Image.Image) -> str:
    """The 64-bit pHash of an encoded image, a uint8 array (HxW or HxWxC) or a PIL image, as 16 hex chars.

    Raises ValueError for bytes PIL cannot decode and for arrays that are not uint8 images.
    """
    return str(imagehash.phash(_pil(image), hash_size=HASH_SIZE))


def _pil(image: bytes | np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            with Image.open(io.BytesIO(bytes(image))) as opened:
                return ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image bytes for pHash: {err}") from err
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4):
            raise ValueError(
                f"pHash needs a uint8 HxW or HxWxC image, got {image.dtype} array of shape {image.shape}"
            )
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise ValueError(f"pHash needs bytes, a uint8 array or a PIL image, got {type(image).__name__}")


def phash_int(value: str) -> int:
    """A hex pHash as an integer; raises ValueError unless it is 16 hex characters."""
    if len(value) != HEX_LENGTH:
        raise ValueError(f"a pHash is {HEX_LENGTH} hex characters, got {value!r}")
    try:
        return int(value, 16)
    except ValueError as err:
        raise ValueError(f"a pHash is {HEX_LENGTH} hex characters, got {value!r}") from err


def hamming(a: str, b: str) -> int:
    """The number of bits in which two hex pHashes differ (0 to 64)."""
    return (phash_int(a) ^ phash_int(b)).bit_count()


def phash_ints(values: Sequence[str]) -> np.ndarray:
    """Hex pHashes as a ``uint64`` array (for ``hamming_many`` and the search's pHash restriction)."""
    return np.array([phash_int(v) for v in values], dtype=np.uint64)


def hamming_many(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distances of two ``uint64`` hash arrays, as ``uint8``."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64)))
