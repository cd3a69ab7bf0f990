"""Part (d): the U-ViT (``unidiffuser.uvit.UViT``) trained with UniDiffuser's objective.

For each (image, caption) pair, the image latents (VAE latent and CLIP image embedding, one timestep) and the
text latent (its own timestep) are noised with independent timesteps and the network predicts both noises
(MSE on the concatenation). Timesteps are those the engine uses: ``0..999`` index the scheduler's
``alphas_cumprod``; besides independent uniform draws, a share of the pairs has one modality clean (timestep
0, no noise: the conditionals t2i and i2t) or at maximal noise (timestep 1000, pure noise: the marginals and
the unconditional branches of classifier-free guidance). A clean or pure-noise modality carries no noise to
predict and is left out of the loss. The data-type token is always 1.

Loss weighting: with the noise (epsilon) parameterisation, an error in the predicted clean latent at high noise
shows up in the noise error shrunk by the signal-to-noise ratio, so a plain noise MSE barely teaches the
coarse structure (layout, colours, which words) that sampling decides first. Each modality's squared error is
weighted by ``clamp(1 / SNR(t), 1, snr_weight_max)`` (the clean-latent error, capped), and the weighted errors
are normalised by the weights: still an MSE on the concatenation of the noises, reweighted over timesteps.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from diffusers import DPMSolverMultistepScheduler

from shapes.common import Meter, autocast, batches, lr_at, set_lr
from unidiffuser.uvit import UViT, UViTConfig


@dataclass
class UViTTrainConfig:
    width: int = 128
    num_layers: int = 7
    heads: int = 4
    patch_size: int = 2
    steps: int = 10000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.03
    ema_decay: float = 0.999
    p_text_clean: float = 0.25  # t2i conditional
    p_image_clean: float = 0.2  # i2t conditional
    p_text_max: float = 0.1  # image marginal / unconditional t2i branch
    p_image_max: float = 0.05  # text marginal / unconditional i2t branch
    snr_weight_max: float = 50.0  # 1 = the plain noise MSE
    amp: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def uvit_config(
    cfg: UViTTrainConfig, *, text_tokens: int, text_dim: int, clip_dim: int, latent_shape
) -> UViTConfig:
    channels, size, _ = latent_shape
    return UViTConfig(
        text_dim=text_dim,
        clip_img_dim=clip_dim,
        num_text_tokens=text_tokens,
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads,
        in_channels=channels,
        out_channels=channels,
        num_layers=cfg.num_layers,
        sample_size=size,
        patch_size=cfg.patch_size,
        activation_fn="gelu",
        attention_bias=False,
        use_data_type_embedding=True,
    )


def init_uvit(model: UViT, generator: torch.Generator) -> None:
    """Truncated-normal(0.02) linear weights, zero biases, zero positional embeddings (as U-ViT)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.02, generator=generator).clamp_(-0.04, 0.04)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
        for name, param in model.named_parameters():
            if "pos_embed" in name and param.ndim == 3:
                param.normal_(0.0, 0.02, generator=generator)


@dataclass
class Latents:
    """Per-pair training inputs: VAE posterior (unscaled mean and std), CLIP image embedding, text latent."""

    vae_mean: torch.Tensor  # (N, C, h, w)
    vae_std: torch.Tensor
    vae_scale: float
    clip: torch.Tensor  # (N, 1, d)
    text: torch.Tensor  # (N, L, text_dim)

    def __len__(self) -> int:
        return len(self.text)


def _noised(x: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise ``x`` to timestep t (0..999 -> alphas_cumprod[t]; -1 -> clean; 1000 -> pure noise)."""
    a = torch.where(t < 0, torch.ones_like(t, dtype=alphas.dtype), alphas[t.clamp(0, 999)])
    a = torch.where(t >= 1000, torch.zeros_like(a), a)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return a.sqrt().view(shape) * x + (1 - a).sqrt().view(shape) * noise


def sample_timesteps(cfg: UViTTrainConfig, batch: int, generator: torch.Generator):
    """(t_img, t_text, img_in_loss, text_in_loss); -1 marks clean (fed to the network as 0), 1000 pure noise."""
    t_img = torch.randint(0, 1000, (batch,), generator=generator)
    t_text = torch.randint(0, 1000, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator)
    edges = torch.tensor([cfg.p_text_clean, cfg.p_image_clean, cfg.p_text_max, cfg.p_image_max]).cumsum(0)
    t_text = torch.where(u < edges[0], torch.full_like(t_text, -1), t_text)
    t_img = torch.where((u >= edges[0]) & (u < edges[1]), torch.full_like(t_img, -1), t_img)
    t_text = torch.where((u >= edges[1]) & (u < edges[2]), torch.full_like(t_text, 1000), t_text)
    t_img = torch.where((u >= edges[2]) & (u < edges[3]), torch.full_like(t_img, 1000), t_img)
    img_in_loss = (t_img >= 0) & (t_img < 1000)
    text_in_loss = (t_text >= 0) & (t_text < 1000)
    return t_img, t_text, img_in_loss, text_in_loss


def unidiffuser_loss(
    model: UViT, data: Latents, idx: torch.Tensor, cfg: UViTTrainConfig, alphas: torch.Tensor,
    generator: torch.Generator, device: torch.device, timesteps=None,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    batch = len(idx)
    eps0 = torch.randn(data.vae_mean[idx].shape, generator=generator)
    vae = (data.vae_mean[idx] + data.vae_std[idx] * eps0) * data.vae_scale
    clip, text = data.clip[idx], data.text[idx]
    t_img, t_text, img_in, text_in = timesteps or sample_timesteps(cfg, batch, generator)
    n_vae, n_clip, n_text = (torch.randn(x.shape, generator=generator) for x in (vae, clip, text))
    inputs = (
        _noised(vae, t_img, alphas, n_vae),
        _noised(clip, t_img, alphas, n_clip),
        _noised(text, t_text, alphas, n_text),
    )
    data_type = torch.ones(batch, dtype=torch.long)
    with autocast(device, cfg.amp):
        out_vae, out_clip, out_text = model(
            *(x.to(device) for x in inputs),
            t_img.clamp_min(0).to(device),
            t_text.clamp_min(0).to(device),
            data_type.to(device),
        )
    sq = {
        "vae": ((out_vae.float() - n_vae.to(device)) ** 2).flatten(1).sum(1),
        "clip": ((out_clip.float() - n_clip.to(device)) ** 2).flatten(1).sum(1),
        "text": ((out_text.float() - n_text.to(device)) ** 2).flatten(1).sum(1),
    }
    img_w = (img_in.float() * snr_weight(t_img, alphas, cfg.snr_weight_max)).to(device)
    text_w = (text_in.float() * snr_weight(t_text, alphas, cfg.snr_weight_max)).to(device)
    dims = {"vae": vae[0].numel(), "clip": clip[0].numel(), "text": text[0].numel()}
    total = img_w * (dims["vae"] + dims["clip"]) + text_w * dims["text"]
    per_pair = img_w * (sq["vae"] + sq["clip"]) + text_w * sq["text"]
    loss = per_pair.sum() / total.sum().clamp_min(1)
    img_n, text_n = img_in.float().to(device), text_in.float().to(device)
    parts = {  # the plain (unweighted) noise MSE of each modality, for the log
        k: float((sq[k].detach() * w).sum() / (w.sum() * dims[k]).clamp_min(1))
        for k, w in (("vae", img_n), ("clip", img_n), ("text", text_n))
    }
    return loss, parts


def snr_weight(t: torch.Tensor, alphas: torch.Tensor, cap: float) -> torch.Tensor:
    """clamp(1 / SNR(t), 1, cap) for timesteps 0..999 (other timesteps: 1; they are masked anyway)."""
    a = alphas[t.clamp(0, 999)]
    return ((1 - a) / a).clamp(1.0, max(1.0, cap))


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    return DPMSolverMultistepScheduler.from_config(scheduler_config).alphas_cumprod.float()


def train_uvit(
    data: Latents,
    cfg: UViTTrainConfig,
    scheduler_config: dict,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[UViT, dict]:
    """Train a U-ViT on precomputed latents; returns the EMA weights and the report."""
    config = uvit_config(
        cfg,
        text_tokens=data.text.shape[1],
        text_dim=data.text.shape[2],
        clip_dim=data.clip.shape[-1],
        latent_shape=tuple(data.vae_mean.shape[1:]),
    )
    model = UViT(config)
    init_uvit(model, generator)
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    alphas = alphas_cumprod(scheduler_config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
    )
    meter = Meter("uvit", cfg.steps)
    for step, idx in enumerate(batches(len(data), cfg.batch_size, cfg.steps, generator)):
        set_lr(optimizer, lr_at(step, cfg.steps, cfg.lr, cfg.warmup))
        loss, parts = unidiffuser_loss(model, data, idx, cfg, alphas, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        meter.add(step, loss=loss.item(), **parts)
    report = {
        "config": cfg.to_dict(),
        "uvit_config": config.to_dict(),
        "curve": meter.curve,
        "final": meter.final(),
        "seconds": round(meter.elapsed, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema.cpu(), report


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
