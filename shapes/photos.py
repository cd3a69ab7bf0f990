"""Procedural photo-like images for tests and benchmarks of image processing that the world's flat shapes do not
exercise (compression, watermarking, metadata): texture with natural images' 1/f amplitude spectrum, colour
correlated across channels, a few soft-edged objects and mild sensor noise. A pure function of its arguments::

    pixels = photo_like(256, 384, seed=3)   # (256, 384, 3) uint8
"""

from __future__ import annotations

import numpy as np


def _pink_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose amplitude spectrum falls as ``1 / f ** exponent``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    radius[0, 0] = 1.0
    spectrum = radius**-exponent * np.exp(2j * np.pi * rng.random(radius.shape))
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return field / field.std()


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB ``height x width`` image that looks (statistically) more like a photo than like a diagram."""
    rng = np.random.default_rng(seed)
    exponent = rng.uniform(0.9, 1.3)
    luma = _pink_noise(rng, height, width, exponent)
    mixing = rng.normal(0.0, 1.0, (3, 3)) * 0.35 + np.eye(3)  # correlated colour channels
    chroma = np.stack([_pink_noise(rng, height, width, exponent + 0.3) for _ in range(3)], axis=-1)
    image = luma[..., None] * rng.uniform(25, 45) + chroma @ mixing * rng.uniform(8, 20)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    for _ in range(rng.integers(1, 5)):  # soft-edged objects
        cy, cx, r = (
            rng.uniform(0, height / max(height, width)),
            rng.uniform(0, width / max(height, width)),
            rng.uniform(0.05, 0.3),
        )
        distance = ((y - cy) ** 2 + (x - cx) ** 2 - r * r) / (r * rng.uniform(0.005, 0.05))
        edge = 0.5 * (1.0 - np.tanh(distance / 2))  # a logistic step, without exp's overflow
        image += edge[..., None] * rng.uniform(-70, 70, 3)
    image += rng.uniform(90, 165, 3) + rng.normal(0.0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
