"""Part (a): a small ``diffusers.AutoencoderKL`` for the world's 64 px images (4 latent channels, 8x8 latents).

It is trained on the world's ``codec`` split (images of every shape-colour pair, no captions): a generic pixel
codec, as Stable Diffusion's autoencoder is for the real UniDiffuser. Trained on the ``train`` split only, it
redraws held-out pairs as seen ones (about half of its held-out reconstructions fail the pixel detector, e.g. a
green diamond comes back as a green circle), which would cap every image metric on held-out prompts.

Loss: pixel MSE, with the pixels of objects (far from the background colour) weighted up, plus a small KL
term; the posterior starts with a small variance.

After training, each latent channel's mean and standard deviation (over the training images) are folded into
the encoder's output convolution and undone in the decoder's input convolution (same reconstructions), and the
scaling factor is set to 1: ``posterior sample * scaling_factor``, what the engine feeds the U-ViT, then has
zero mean and unit variance in every channel, with no engine change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from shapes.common import Meter, autocast, batches, images_to_unit, lr_at, set_lr


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    kl_weight: float = 1e-6
    foreground_weight: float = (
        10.0  # extra loss weight of object pixels (they are a small part of each image)
    )
    initial_logvar: float = -5.0
    amp: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def build_vae(cfg: VAEConfig, resolution: int) -> AutoencoderKL:
    blocks = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=resolution,
        scaling_factor=1.0,
    )


def train_vae(
    images, cfg: VAEConfig, device: torch.device, generator: torch.Generator
) -> tuple[AutoencoderKL, dict]:
    """Train on uint8 images (N, H, W, 3); returns the VAE (scaling factor set) and its report."""
    data = images_to_unit(images)
    vae = build_vae(cfg, data.shape[-1])
    with torch.no_grad():  # a small initial posterior variance: the decoder learns from sharp latents
        vae.quant_conv.bias[cfg.latent_channels :] = cfg.initial_logvar
    vae = vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    meter = Meter("vae", cfg.steps)
    for step, idx in enumerate(batches(len(data), cfg.batch_size, cfg.steps, generator)):
        set_lr(optimizer, lr_at(step, cfg.steps, cfg.lr, cfg.warmup))
        x = data[idx].to(device)
        with autocast(device, cfg.amp):
            posterior = vae.encode(x).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            z = posterior.mean + posterior.std * noise
            recon = vae.decode(z).sample
        error = (recon.float() - x) ** 2
        weight = 1.0 + cfg.foreground_weight * foreground(x)
        mse = error.mean()
        kl = posterior.kl().float().mean()
        loss = (error * weight).mean() / weight.mean() + cfg.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        meter.add(step, mse=mse.item(), kl=kl.item())
    vae.eval()
    raw = normalise_latents(vae, data, device)  # per-channel statistics before the fold
    stats = latent_stats(vae, data, device)
    vae.register_to_config(scaling_factor=1.0)
    report = {
        "config": cfg.to_dict(),
        "curve": meter.curve,
        "final": meter.final(),
        "raw_latent_mean": raw["mean"],
        "raw_latent_std": raw["std"],
        "latent_mean": stats["mean"],
        "latent_std": stats["std"],
        "reconstruction_mse": stats["mse"],
        "seconds": round(meter.elapsed, 1),
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    return vae, report


def foreground(x: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """(B, 1, H, W) mask of the pixels that differ from the background (the median of the corner pixels)."""
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]], dim=-1)
    background = corners.median(dim=-1).values[:, :, None, None]
    return ((x - background).abs().amax(1, keepdim=True) > threshold).float()


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, data: torch.Tensor, device, limit: int = 2048) -> dict:
    """Fold each latent channel's mean and std into quant_conv (encoder side) and post_quant_conv (decoder side)."""
    means = torch.cat(
        [vae.encode(x.to(device)).latent_dist.mean.float().cpu() for x in data[:limit].split(128)]
    )
    mean, std = means.mean((0, 2, 3)), means.std((0, 2, 3)).clamp_min(1e-6)
    channels = mean.numel()
    enc, dec = vae.quant_conv, vae.post_quant_conv
    m, sd = mean.to(enc.weight.device), std.to(enc.weight.device)
    # decoder: z = sd * z' + m  ->  W z + b = (W * sd) z' + (b + W m)
    dec.bias.add_(dec.weight[:, :, 0, 0] @ m)
    dec.weight.mul_(sd[None, :, None, None])
    # encoder: mean' = (mean - m) / sd, logvar' = logvar - 2 log sd
    enc.weight[:channels].div_(sd[:, None, None, None])
    enc.bias[:channels].sub_(m).div_(sd)
    enc.bias[channels:].sub_(2 * sd.log())
    return {"mean": mean.tolist(), "std": std.tolist()}


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, data: torch.Tensor, device: torch.device, limit: int = 2048) -> dict:
    """Mean / std of posterior means and the reconstruction MSE (of the mean) over up to ``limit`` images."""
    means, errors = [], []
    for part in data[:limit].split(128):
        x = part.to(device)
        mean = vae.encode(x).latent_dist.mean
        means.append(mean.float().cpu())
        errors.append(F.mse_loss(vae.decode(mean).sample.float(), x, reduction="none").mean((1, 2, 3)).cpu())
    latents = torch.cat(means)
    return {
        "mean": float(latents.mean()),
        "std": float(latents.std()),
        "mse": float(torch.cat(errors).mean()),
    }


@torch.no_grad()
def encode_posteriors(
    vae: AutoencoderKL, images, device: torch.device, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of each image, float32 on CPU, unscaled."""
    data = images_to_unit(images)
    means, stds = [], []
    for part in data.split(batch_size):
        dist = vae.encode(part.to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)
