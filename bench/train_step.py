"""Shapes-model U-ViT training step: seconds per step eager vs ``torch.compile`` (and with/without bf16 autocast).

    python bench/train_step.py [--steps 25] [--threads 2]

Uses the shipped training configuration (``UViTTrainConfig`` defaults: width 128, 7 layers, batch 128) on
random latents of the shapes model's shapes, the project's own ``unidiffuser_loss`` and an AdamW step; the
median of the last 15 steps is reported (the first steps include warm-up and, compiled, compilation).
It answers one question: how much a compiled U-ViT would shorten the full training command.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from shapes.diffusion import (
    Latents,
    UViTTrainConfig,
    alphas_cumprod,
    init_uvit,
    unidiffuser_loss,
    uvit_config,
)
from unidiffuser.uvit import UViT

SCHEDULER = Path(__file__).resolve().parents[1] / "models" / "unidiffuser-shapes" / "scheduler"
LATENT, CLIP_DIM, TEXT_TOKENS, TEXT_DIM = (4, 8, 8), 32, 32, 16


def seconds_per_step(*, compiled: bool, amp: bool, steps: int, pool: int = 2048) -> float:
    """Median seconds of the last 15 of ``steps`` training steps."""
    generator = torch.Generator().manual_seed(0)
    data = Latents(
        torch.randn(pool, *LATENT, generator=generator),
        torch.rand(pool, *LATENT, generator=generator) * 0.1,
        0.2,
        torch.randn(pool, 1, CLIP_DIM, generator=generator),
        torch.randn(pool, TEXT_TOKENS, TEXT_DIM, generator=generator),
    )
    cfg = UViTTrainConfig(amp=amp)
    model = UViT(
        uvit_config(cfg, text_tokens=TEXT_TOKENS, text_dim=TEXT_DIM, clip_dim=CLIP_DIM, latent_shape=LATENT)
    )
    init_uvit(model, generator)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    alphas = alphas_cumprod(json.loads((SCHEDULER / "scheduler_config.json").read_text()))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        idx = torch.randint(0, pool, (cfg.batch_size,), generator=generator)
        loss, _ = unidiffuser_loss(forward, data, idx, cfg, alphas, generator, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    last = sorted(times[-15:])
    return last[len(last) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    eager = seconds_per_step(compiled=False, amp=True, steps=args.steps)
    fp32 = seconds_per_step(compiled=False, amp=False, steps=args.steps)
    compiled = seconds_per_step(compiled=True, amp=True, steps=args.steps)
    print(f"eager, bf16 autocast (the training default): {eager:.3f} s/step")
    print(f"eager, float32:                              {fp32:.3f} s/step")
    print(f"compiled, bf16 autocast:                     {compiled:.3f} s/step ({eager / compiled:.2f}x)")


if __name__ == "__main__":
    main()
