"""Sampling loops over several modalities at once.

The modalities being denoised (e.g. VAE latent + CLIP image embedding, or the text latent, or all three) are
packed into one flat vector per record, so one scheduler step moves them together with one shared timestep, as
in UniDiffuser. ``sample_dpm`` runs diffusers' maintained DPM-Solver++; ``ddim_invert``/``ddim_sample`` are the
deterministic first-order pair used for interpolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DPMSolverMultistepScheduler

Parts = list[torch.Tensor]
EpsFn = Callable[[Parts, torch.Tensor], Parts]  # (noisy parts, timestep) -> predicted noise per part


def pack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flatten and concatenate per-record tensors: (B, ...) each -> (B, D)."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def unpack(x: torch.Tensor, shapes: Sequence[torch.Size]) -> Parts:
    """Inverse of ``pack`` for per-record shapes ``shapes``."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return [chunk.reshape(x.shape[0], *s) for chunk, s in zip(x.split(sizes, dim=1), shapes, strict=True)]


def sample_dpm(eps_fn: EpsFn, init: Parts, scheduler_config: dict, steps: int) -> Parts:
    """Denoise ``init`` (pure noise) with DPM-Solver++ in float32; returns the clean parts."""
    scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config)
    device = init[0].device
    scheduler.set_timesteps(steps, device=device)
    shapes = [p.shape[1:] for p in init]
    x = pack(init).float() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = pack(eps_fn(unpack(x, shapes), t)).float()
        x = scheduler.step(eps, t, x).prev_sample
    return unpack(x, shapes)


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    return DPMSolverMultistepScheduler.from_config(scheduler_config).alphas_cumprod.float()


def ddim_timesteps(scheduler_config: dict, steps: int) -> list[int]:
    """Evenly spaced training timesteps from high noise to low, as the DPM-Solver schedule uses."""
    scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def _ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def ddim_invert(eps_fn: EpsFn, clean: Parts, scheduler_config: dict, steps: int) -> Parts:
    """Deterministic DDIM inversion (as diffusers' DDIMInverseScheduler): clean parts -> noise at the top step.

    Each step evaluates the noise at the next, noisier timestep and moves the current point up to it.
    """
    alphas = _alphas_cumprod(scheduler_config).to(clean[0].device)
    shapes = [p.shape[1:] for p in clean]
    x = pack(clean).float()
    a_from = torch.tensor(1.0, device=x.device)
    for t in reversed(ddim_timesteps(scheduler_config, steps)):
        eps = pack(eps_fn(unpack(x, shapes), torch.tensor(t, device=x.device))).float()
        x = _ddim_move(x, eps, a_from, alphas[t])
        a_from = alphas[t]
    return unpack(x, shapes)


def ddim_sample(eps_fn: EpsFn, noise: Parts, scheduler_config: dict, steps: int) -> Parts:
    """Deterministic DDIM sampling from ``noise`` at the top step down to clean parts."""
    alphas = _alphas_cumprod(scheduler_config).to(noise[0].device)
    timesteps = ddim_timesteps(scheduler_config, steps)
    shapes = [p.shape[1:] for p in noise]
    x = pack(noise).float()
    for i, t in enumerate(timesteps):
        a_to = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=x.device)
        eps = pack(eps_fn(unpack(x, shapes), torch.tensor(t, device=x.device))).float()
        x = _ddim_move(x, eps, alphas[t], a_to)
    return unpack(x, shapes)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation per record between two noise tensors (B, ...)."""
    fa, fb = a.reshape(a.shape[0], -1).float(), b.reshape(b.shape[0], -1).float()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]
    sin = torch.sin(omega)
    linear = (1 - weight) * fa + weight * fb
    spherical = (torch.sin((1 - weight) * omega) * fa + torch.sin(weight * omega) * fb) / sin.clamp_min(1e-12)
    out = torch.where(sin.abs() < 1e-6, linear, spherical)
    return out.reshape(a.shape).to(a.dtype)
