"""A pixel-level detector for the shapes world, independent of any learned model (the evaluator's eyes).

Background: the median colour of the image border, named by the nearest background colour. Objects: the
connected regions of pixels far from that background colour. Each is named by the nearest object colour (of
its core pixels' median), a size from its extent, a position from the centre of its extent, and a shape from
coverage-weighted moments, which are robust to blur and pixel grids: the fourth moment along the axes over the
fourth moment along the diagonals (square 3/4, circle 1, diamond 4/3) and the vertical skewness (an upward
triangle has its mass low: -0.56; the other shapes are symmetric).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shapes.world import BACKGROUNDS, COLOURS, POSITIONS, RESOLUTION, SIZES

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as an object pixel
MIN_AREA_FRACTION = 24 / (RESOLUTION * RESOLUTION)  # smaller regions are noise
# (log(axis / diagonal fourth moment), vertical skewness) of each ideal shape, and the feature scales
SHAPE_PROTOTYPES = {
    "square": (np.log(0.75), 0.0),
    "circle": (0.0, 0.0),
    "diamond": (np.log(4 / 3), 0.0),
    "triangle": (0.02, -0.56),
}
FEATURE_SCALE = (np.log(4 / 3), 0.56)


@dataclass
class DetectedObject:
    shape: str
    colour: str
    size: str
    position: str
    area: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    colour_distance: float  # RGB distance from the named colour (how sure the colour is)
    moment_ratio: float  # log(axis / diagonal fourth moment)
    skewness: float

    @property
    def pair(self) -> tuple[str, str]:
        return (self.shape, self.colour)


@dataclass
class Detection:
    background: str
    objects: list[DetectedObject]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return sorted(o.pair for o in self.objects)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    best = int(np.argmin(distances))
    return names[best], float(distances[best])


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of a boolean mask, as arrays of (y, x) pixel coordinates."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(np.array(pixels))
    return regions


def shape_features(coverage: np.ndarray) -> tuple[float, float]:
    """(log axis/diagonal fourth-moment ratio, vertical skewness) of a coverage map (values in [0, 1])."""
    ys, xs = np.mgrid[0 : coverage.shape[0], 0 : coverage.shape[1]] + 0.5
    mass = float(coverage.sum())
    if mass <= 0:
        return 0.0, 0.0
    dx = xs - (coverage * xs).sum() / mass
    dy = ys - (coverage * ys).sum() / mass
    u, v = (dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2)
    axis = float((coverage * (dx**4 + dy**4)).sum())
    diagonal = float((coverage * (u**4 + v**4)).sum())
    variance = float((coverage * dy**2).sum()) / mass
    skew = float((coverage * dy**3).sum()) / mass / max(variance, 1e-9) ** 1.5
    return float(np.log(max(axis, 1e-9) / max(diagonal, 1e-9))), skew


def classify_shape(coverage: np.ndarray) -> tuple[str, float, float]:
    """(shape, moment ratio, skewness) of one object's coverage map (a boolean mask works too)."""
    ratio, skew = shape_features(np.asarray(coverage, dtype=np.float64))
    scores = {
        name: ((ratio - r) / FEATURE_SCALE[0]) ** 2 + ((skew - s) / FEATURE_SCALE[1]) ** 2
        for name, (r, s) in SHAPE_PROTOTYPES.items()
    }
    return min(scores, key=lambda name: scores[name]), ratio, skew


def detect(image: np.ndarray) -> Detection:
    """Background and objects of one (H, W, 3) uint8 image of the shapes world."""
    pixels = np.asarray(image, dtype=np.float64)
    height, width, _ = pixels.shape
    scale = height / RESOLUTION
    border = np.concatenate(
        [pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
         pixels[:, -2:].reshape(-1, 3)]
    )  # fmt: skip
    bg_rgb = np.median(border, axis=0)
    background, _ = _nearest(bg_rgb, BACKGROUNDS)
    distance = np.linalg.norm(pixels - bg_rgb, axis=-1)
    mask = distance > FOREGROUND_DISTANCE
    min_area = MIN_AREA_FRACTION * height * width
    objects = []
    regions = [r for r in components(mask) if len(r) >= min_area]
    labels = np.full(mask.shape, -1)
    for i, region in enumerate(regions):
        labels[region[:, 0], region[:, 1]] = i
    for i, region in enumerate(regions):
        ys, xs = region[:, 0], region[:, 1]
        far = distance[ys, xs]
        # the object's outline is where it is half-way between the background and its own colour
        contrast = float(np.quantile(far, 0.9))
        inside = far >= max(FOREGROUND_DISTANCE, 0.5 * contrast)
        if inside.sum() < min_area / 2:
            continue
        y0, y1, x0, x1 = ys[inside].min(), ys[inside].max(), xs[inside].min(), xs[inside].max()
        # coverage of every pixel around the object (its blended edge included), others' pixels left out
        b0, b1 = max(0, y0 - 2), min(height, y1 + 3)
        a0, a1 = max(0, x0 - 2), min(width, x1 + 3)
        coverage = np.clip(distance[b0:b1, a0:a1] / contrast, 0.0, 1.0)
        coverage[(labels[b0:b1, a0:a1] >= 0) & (labels[b0:b1, a0:a1] != i)] = 0.0
        coverage[coverage < 0.15] = 0.0
        shape, ratio, skew = classify_shape(coverage)
        # the colour of the region's core: its pixels farthest from the background (edges are blended)
        core = pixels[ys, xs][far >= np.quantile(far, 0.5)]
        colour, colour_distance = _nearest(np.median(core, axis=0), COLOURS)
        extent = max(y1 - y0 + 1, x1 - x0 + 1) / scale
        size = "small" if extent < (SIZES["small"] + SIZES["large"]) / 2 else "large"
        centre = np.array([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2]) / scale
        position = min(POSITIONS, key=lambda p: float(np.linalg.norm(centre - np.array(POSITIONS[p]))))
        objects.append(
            DetectedObject(shape, colour, size, position, int(inside.sum()), (int(x0), int(y0), int(x1), int(y1)),
                           colour_distance, ratio, skew)
        )  # fmt: skip
    objects.sort(key=lambda o: -o.area)
    return Detection(background, objects)


def matches(found: Sequence[tuple[str, str | None]], expected: Sequence[tuple[str, str | None]]) -> bool:
    """Whether two lists of (shape, colour) name the same objects (as multisets)."""
    return sorted(found, key=str) == sorted(expected, key=str)
