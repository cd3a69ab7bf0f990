"""UniDiffuser's modes as compositions of one sampler: each mode picks which modalities are noised.

Every function works on one batch of latents. Classifier-free guidance runs its branches as ONE batched
forward per step (t2i/i2t: 2B rows, joint: 3B rows). Every random draw goes through ``ctx.noise``, which holds
one generator per record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unidiffuser.noise import NoiseSource
from unidiffuser.sampler import Parts, ddim_invert, ddim_sample, sample_dpm, slerp


class Denoiser:
    """The U-ViT with per-sample timesteps, the data-type token and the compute dtype applied."""

    def __init__(self, uvit: Callable[..., Any], config_uvit: Any, *, data_type: int, dtype: torch.dtype):
        self.uvit = uvit
        self.uses_data_type = config_uvit.use_data_type_embedding
        self.data_type = data_type
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(
        self,
        img_vae: torch.Tensor,
        img_clip: torch.Tensor,
        text: torch.Tensor,
        t_img: torch.Tensor | int,
        t_text: torch.Tensor | int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, device = img_vae.shape[0], img_vae.device
        t_img, t_text = _per_record(t_img, batch, device), _per_record(t_text, batch, device)
        data_type = torch.full((batch,), self.data_type, device=device) if self.uses_data_type else None
        outs = self.uvit(
            img_vae.to(self.dtype), img_clip.to(self.dtype), text.to(self.dtype), t_img, t_text, data_type
        )
        return tuple(o.float() for o in outs)


def _per_record(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """A timestep per record: a scalar (int or 0-d tensor) repeated over the batch, a vector as is."""
    if isinstance(t, int) or t.ndim == 0:
        return torch.as_tensor(t, device=device).long().expand(batch)
    return t.long()


@dataclass
class SamplingContext:
    """What every mode needs for one batch."""

    denoiser: Denoiser
    noise: NoiseSource
    scheduler_config: dict
    steps: int
    guidance_scale: float
    vae_shape: tuple[int, int, int]  # (C, h, w) of one VAE latent
    clip_shape: tuple[int, int]  # (1, clip_img_dim)
    text_shape: tuple[int, int]  # (77, text_dim)
    max_timestep: int = 1000

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return self.guidance_scale * cond + (1.0 - self.guidance_scale) * uncond


def _twice(t: torch.Tensor) -> torch.Tensor:
    """The batch twice over (conditional and unconditional halves of one guided call)."""
    return torch.cat([t, t])


def t2i(ctx: SamplingContext, text: torch.Tensor, empty_text: torch.Tensor | None = None) -> Parts:
    """Image latents (VAE, CLIP) conditioned on text latents; ``empty_text`` selects empty-token CFG."""
    batch = text.shape[0]
    top = ctx.max_timestep

    def eps(parts: Parts, t: torch.Tensor) -> Parts:
        img_vae, img_clip = parts
        if not ctx.cfg:
            vae_out, clip_out, _ = ctx.denoiser(img_vae, img_clip, text, t, 0)
            return [vae_out, clip_out]
        if empty_text is None:  # true unconditional: the text at maximal noise
            uncond_text, uncond_t = ctx.noise.draw(ctx.text_shape), top
        else:
            uncond_text, uncond_t = empty_text.expand_as(text), 0
        zeros = torch.zeros(batch, dtype=torch.long, device=text.device)
        vae_out, clip_out, _ = ctx.denoiser(
            _twice(img_vae),
            _twice(img_clip),
            torch.cat([text, uncond_text.to(text.dtype)]),
            t,
            torch.cat([zeros, torch.full_like(zeros, uncond_t)]),
        )
        return [ctx.guide(*vae_out.chunk(2)), ctx.guide(*clip_out.chunk(2))]

    init = [ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape)]
    return sample_dpm(eps, init, ctx.scheduler_config, ctx.steps)


def i2t(ctx: SamplingContext, img_vae: torch.Tensor, img_clip: torch.Tensor) -> torch.Tensor:
    """Text latents conditioned on image latents (captioning)."""
    top = ctx.max_timestep

    def eps(parts: Parts, t: torch.Tensor) -> Parts:
        (text,) = parts
        if not ctx.cfg:
            return [ctx.denoiser(img_vae, img_clip, text, 0, t)[2]]
        noise_vae, noise_clip = ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape)
        zeros = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
        _, _, text_out = ctx.denoiser(
            torch.cat([img_vae, noise_vae.to(img_vae.dtype)]),
            torch.cat([img_clip, noise_clip.to(img_clip.dtype)]),
            _twice(text),
            torch.cat([zeros, torch.full_like(zeros, top)]),
            t,
        )
        return [ctx.guide(*text_out.chunk(2))]

    (text,) = sample_dpm(eps, [ctx.noise.draw(ctx.text_shape)], ctx.scheduler_config, ctx.steps)
    return text


def joint(ctx: SamplingContext) -> Parts:
    """(VAE latent, CLIP latent, text latent) sampled together from nothing."""
    top = ctx.max_timestep

    def eps(parts: Parts, t: torch.Tensor) -> Parts:
        img_vae, img_clip, text = parts
        if not ctx.cfg:
            return list(ctx.denoiser(img_vae, img_clip, text, t, t))
        noise_vae, noise_clip = ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape)
        noise_text = ctx.noise.draw(ctx.text_shape)
        t_b = t.long().expand(text.shape[0])
        top_b = torch.full_like(t_b, top)
        # rows: [joint | text given noised image (text marginal) | image given noised text (image marginal)]
        vae_out, clip_out, text_out = ctx.denoiser(
            torch.cat([img_vae, noise_vae, img_vae]),
            torch.cat([img_clip, noise_clip, img_clip]),
            torch.cat([text, text, noise_text]),
            torch.cat([t_b, top_b, t_b]),
            torch.cat([t_b, t_b, top_b]),
        )
        vae_c, _, vae_u = vae_out.chunk(3)
        clip_c, _, clip_u = clip_out.chunk(3)
        text_c, text_u, _ = text_out.chunk(3)
        return [ctx.guide(vae_c, vae_u), ctx.guide(clip_c, clip_u), ctx.guide(text_c, text_u)]

    init = [ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape), ctx.noise.draw(ctx.text_shape)]
    return sample_dpm(eps, init, ctx.scheduler_config, ctx.steps)


def image(ctx: SamplingContext) -> Parts:
    """Unconditional image latents: the text is held at maximal noise."""

    def eps(parts: Parts, t: torch.Tensor) -> Parts:
        img_vae, img_clip = parts
        vae_out, clip_out, _ = ctx.denoiser(
            img_vae, img_clip, ctx.noise.draw(ctx.text_shape), t, ctx.max_timestep
        )
        return [vae_out, clip_out]

    init = [ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape)]
    return sample_dpm(eps, init, ctx.scheduler_config, ctx.steps)


def text(ctx: SamplingContext) -> torch.Tensor:
    """Unconditional text latents: the image is held at maximal noise."""

    def eps(parts: Parts, t: torch.Tensor) -> Parts:
        noise_vae, noise_clip = ctx.noise.draw(ctx.vae_shape), ctx.noise.draw(ctx.clip_shape)
        return [ctx.denoiser(noise_vae, noise_clip, parts[0], ctx.max_timestep, t)[2]]

    (out,) = sample_dpm(eps, [ctx.noise.draw(ctx.text_shape)], ctx.scheduler_config, ctx.steps)
    return out


def interpolate(
    ctx: SamplingContext,
    images: tuple[Parts, Parts],
    texts: tuple[torch.Tensor, torch.Tensor],
    weights: list[float],
) -> list[Parts]:
    """Images between two real images: DDIM-invert each (conditioned on its own caption latent, no guidance),
    then for each weight slerp the two noises, lerp the two caption latents, and DDIM-sample t2i from there
    (with the context's guidance). Weight 0 and 1 reconstruct the inputs up to the inversion error."""

    def conditioned_on(text_latent: torch.Tensor, guidance: float):
        def eps(parts: Parts, t: torch.Tensor) -> Parts:
            img_vae, img_clip = parts
            zeros = torch.zeros(img_vae.shape[0], dtype=torch.long, device=img_vae.device)
            if guidance <= 1.0:
                vae_out, clip_out, _ = ctx.denoiser(img_vae, img_clip, text_latent, t, zeros)
                return [vae_out, clip_out]
            vae_out, clip_out, _ = ctx.denoiser(
                _twice(img_vae),
                _twice(img_clip),
                torch.cat([text_latent, ctx.noise.draw(ctx.text_shape).to(text_latent.dtype)]),
                t,
                torch.cat([zeros, torch.full_like(zeros, ctx.max_timestep)]),
            )
            g = guidance
            return [g * c + (1 - g) * u for c, u in (vae_out.chunk(2), clip_out.chunk(2))]

        return eps

    noises = [ddim_invert(conditioned_on(txt, 1.0), img, ctx.scheduler_config, ctx.steps) for img, txt in
              zip(images, texts, strict=True)]  # fmt: skip
    frames = []
    for w in weights:
        start = [slerp(a, b, w) for a, b in zip(noises[0], noises[1], strict=True)]
        cond = (1 - w) * texts[0] + w * texts[1]
        frames.append(
            ddim_sample(conditioned_on(cond, ctx.guidance_scale), start, ctx.scheduler_config, ctx.steps)
        )
    return frames
