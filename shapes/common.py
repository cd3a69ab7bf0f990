"""What every training part shares: seeding, device and mixed precision, the optimiser schedule, data tensors."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from shapes.world import ShapesWorld

log = logging.getLogger("shapes")

# CLIP's image normalisation (the processor saved with the checkpoint uses the same numbers)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast where the hardware has it (weights, optimiser state and losses stay float32)."""
    if not enabled or not bf16_supported(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches, epoch after epoch of seeded permutations of ``range(n)``."""
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            if done == steps:
                return
            yield order[start : start + batch_size]
            done += 1


def images_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def images_to_clip(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> CLIP pixel values, exactly what the saved ``CLIPImageProcessor`` produces for
    images already at the model resolution (resize and crop are then no-ops)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class WorldData:
    """A fixed training set drawn from the world: uint8 images and one caption per image."""

    images: np.ndarray
    captions: list[str]

    @classmethod
    def draw(cls, world: ShapesWorld, count: int, split: str = "train", start: int = 0) -> WorldData:
        images, captions, _ = world.batch(split, start, count)
        return cls(images, captions)

    def __len__(self) -> int:
        return len(self.captions)


class Meter:
    """Running loss averages for the log and the report (every ``every`` steps one point)."""

    def __init__(self, name: str, total_steps: int, every: int | None = None):
        self.name = name
        self.total = total_steps
        self.every = every or max(1, total_steps // 20)
        self.sums: dict[str, float] = {}
        self.count = 0
        self.curve: list[dict[str, float]] = []
        self.start = time.monotonic()

    def add(self, step: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            point = {"step": step + 1, **{k: round(v / self.count, 5) for k, v in self.sums.items()}}
            self.curve.append(point)
            elapsed = time.monotonic() - self.start
            text = " ".join(f"{k}={v:.4f}" for k, v in point.items() if k != "step")
            log.info("[%s] step %d/%d %s (%.0fs)", self.name, step + 1, self.total, text, elapsed)
            self.sums, self.count = {}, 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def final(self) -> dict[str, float]:
        return {k: v for k, v in self.curve[-1].items() if k != "step"} if self.curve else {}
