"""Fixtures for the dedup tests: random unit vectors with near-duplicates planted at known cosines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors (isotropic: two of them are nearly orthogonal in high dimension)."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near_copy(rng: np.random.Generator, v: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector whose cosine with the unit vector ``v`` is exactly ``cosine`` (up to float32)."""
    noise = rng.standard_normal(v.shape[0])
    noise -= noise @ v * v
    noise /= np.linalg.norm(noise)
    out = cosine * v.astype(np.float64) + np.sqrt(1 - cosine**2) * noise
    return (out / np.linalg.norm(out)).astype(np.float32)


@dataclass(frozen=True)
class Planted:
    """Vectors and the pairs planted among them (``(i, j)``, ``i < j``), with their cosines."""

    vectors: np.ndarray
    pairs: dict[tuple[int, int], float]


def plant(n: int, dim: int, copies: int, *, low: float, high: float = 0.995, seed: int = 0) -> Planted:
    """``n`` rows: ``copies`` of them near-copies (cosine uniform in [low, high]) of distinct other rows."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, dim)
    rows = rng.permutation(n)
    sources, targets = rows[:copies], rows[copies : 2 * copies]
    pairs = {}
    for s, t in zip(sources.tolist(), targets.tolist(), strict=True):
        cosine = float(rng.uniform(low, high))
        x[t] = near_copy(rng, x[s], cosine)
        pairs[(min(s, t), max(s, t))] = cosine
    return Planted(x, pairs)


@pytest.fixture()
def planted() -> Callable[..., Planted]:
    """``planted(n, dim, copies, low=..., high=..., seed=...)``: see ``plant``."""
    return plant


@pytest.fixture(name="near_copy")
def near_copy_fixture() -> Callable[[np.random.Generator, np.ndarray, float], np.ndarray]:
    """``near_copy(rng, v, cosine)``: see ``near_copy``."""
    return near_copy
