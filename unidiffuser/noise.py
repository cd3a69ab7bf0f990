"""Per-record randomness: every random draw for a record comes from that record's own generator.

This is what makes a record's output independent of batch size, batch order and batch neighbours.
All sampling code draws through a ``NoiseSource`` so tests can record or script the draws.
"""

from __future__ import annotations

from typing import Protocol

import torch


class NoiseSource(Protocol):
    """Draws standard normal noise of ``shape`` for every record of the current batch: (B, *shape)."""

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor: ...


class RecordNoise:
    """One ``torch.Generator`` per record, seeded from the record's seed.

    Draws are made on the CPU (in float32) and then moved to the engine's device and dtype, so a seed means
    the same noise on every machine: CPU and GPU runs of a job start from identical latents.
    """

    def __init__(self, seeds: list[int], device: torch.device | str, dtype: torch.dtype):
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        draws = [torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)

    def subset(self, indices: list[int]) -> RecordNoise:
        """The same generators (state shared) for a subset of records."""
        sub = RecordNoise([], self.device, self.dtype)
        sub.generators = [self.generators[i] for i in indices]
        return sub
