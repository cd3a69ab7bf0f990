"""Engines that make records without a model, for the pipeline tests whose claims are not about the model.

``stage_with(engine)`` is the job's own ``GenerateStage`` with ``engine`` in place of UniDiffuser: the stage's
bookkeeping (statuses, model parameters, paired texts, per-record and per-unit errors) runs as in a job, and
its actor imports no torch, diffusers or transformers (an engine actor's start costs about 5 s of CPU). The
real engine's output through the whole pipeline is tested where it is the claim: the end-to-end mode tests,
resume and byte-identical reruns, the faults tests that break the engine, the CLI and the demo.

This module is shipped to the actors by value (it need not be importable there), as the tests' own local
classes are.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from ray import cloudpickle

from pipelines.stages.generate import GenerateStage
from shapes.photos import photo_like
from unidiffuser import Result

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCENE = re.compile(r"scene\s+(\d+)", re.IGNORECASE)


class Engine(Protocol):
    """What ``GenerateStage`` asks of an engine."""

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]: ...


def stage_with(engine: Engine) -> type[GenerateStage]:
    """The job's generate stage, loading ``engine`` (copied into each actor) instead of the model."""

    class StandInStage(GenerateStage):
        def load_engine(self, checkpoint_identity: str | None) -> Any:
            return engine

    StandInStage.__name__ = StandInStage.__qualname__ = f"GenerateStage[{type(engine).__name__}]"
    return StandInStage


class FlatEngine:
    """A flat grey ``size`` px image per record."""

    def __init__(self, size: int = 8):
        self.size = size

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]:
        return [Result(image=np.full((self.size, self.size, 3), 127, np.uint8)) for _ in seeds]


class SeededEngine:
    """What the mode makes (a 64 px picture, a caption), from each record's seed alone: records of another job
    seed differ, and a record made again is the same."""

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]:
        return [
            Result(
                image=_picture(int(seed)) if mode is None or mode.makes_image else None,
                text=f"a picture of seed {int(seed)}" if mode is not None and mode.makes_text else None,
            )
            for seed in seeds
        ]


class SceneEngine:
    """Each prompt's picture depends only on the scene number in it (``scene 3 copy b`` and ``scene 3`` get
    the same pixels): planted exact duplicates."""

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]:
        return [Result(image=scene_image(prompt)) for prompt in inputs or ()]


class PhotoEngine:
    """A photo-like ``size`` px image per record, from its seed (the watermark needs 256 x 256 px)."""

    def __init__(self, size: int = 256):
        self.size = size

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]:
        return [Result(image=photo_like(self.size, self.size, seed=int(seed) % 1000)) for seed in seeds]


class RaisingEngine:
    """Flat images, except that ``run`` raises (instead of returning error results) for a batch holding
    ``poison``: an engine bug."""

    def __init__(self, poison: str):
        self.poison = poison

    def run(self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Any = None) -> list[Result]:
        if any(self.poison in p for p in inputs or ()):
            raise KeyError(f"simulated engine bug on {self.poison!r}")
        return [Result(image=np.zeros((64, 64, 3), np.uint8)) for _ in seeds]


def scene_image(prompt: str) -> np.ndarray:
    """A 64 px picture that depends only on the scene number in ``prompt``."""
    return _picture(int(SCENE.search(prompt).group(1)))


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    x, y = rng.integers(0, 40, 2)
    image[y : y + 24, x : x + 24] = rng.integers(0, 256, 3)
    return image
