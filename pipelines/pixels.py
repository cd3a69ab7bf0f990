"""Images travel between stages as raw RGB bytes of a square image (compact, Arrow-native, no re-encoding)."""

from __future__ import annotations

import math

import numpy as np


def to_bytes(pixels: np.ndarray) -> bytes:
    """(S, S, 3) uint8 -> raw bytes."""
    return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    """Raw bytes of a square RGB image -> (S, S, 3) uint8."""
    side = math.isqrt(len(data) // 3)
    if side * side * 3 != len(data):
        raise ValueError(f"{len(data)} bytes is not a square RGB image")
    return np.frombuffer(data, dtype=np.uint8).reshape(side, side, 3)
