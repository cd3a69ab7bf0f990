"""Encoders and decoders around the U-ViT: prompts -> text latents, images <-> (VAE, CLIP) latents,
text latents -> captions. Batched; every random draw (the VAE posterior) goes through the record noise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from unidiffuser.components import Components
from unidiffuser.noise import NoiseSource

CPU_CONV_PIXELS = 4 * 64 * 64
"""Image pixels per convolutional forward on CPU (see ``cpu_conv_chunk``)."""


def cpu_conv_chunk(resolution: int) -> int:
    """Records per convolutional forward on CPU for images of ``resolution``: fixed per checkpoint, so results
    are bitwise batch-independent. Small images go several at a time (at 64 px, 4 was the fastest per record
    of 1, 2, 4 and 8); from 128 px one at a time, where batching gains little (15 % at 256 px) and padding
    a short batch would cost whole images (a 512 px decode alone takes seconds on a CPU)."""
    return min(8, max(1, CPU_CONV_PIXELS // (resolution * resolution)))


class Codecs:
    """The non-diffusion parts of a checkpoint, on one device and dtype."""

    def __init__(self, components: Components, *, device: torch.device, dtype: torch.dtype):
        self.c = components
        self.device = device
        self.dtype = dtype
        # CPU convolution kernels are chosen by batch shape, which changes results in the last bits. On CPU the
        # convolutional parts (VAE, CLIP image encoder) therefore always run on chunks of one fixed size, the last
        # one padded with zeros: for a fixed shape a record's result does not depend on its position or its
        # neighbours, so outputs never depend on the batch (tested).
        self.conv_chunk = cpu_conv_chunk(components.resolution) if device.type == "cpu" else None

    def _chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``batch``; on CPU in fixed-size, zero-padded chunks (see ``__init__``)."""
        size = self.conv_chunk
        if size is None:
            return fn(batch)
        outs = []
        # one memory layout for every chunk too: a channels-last input would take other kernels than its padded tail
        for part in batch.contiguous().split(size):
            real = part.shape[0]
            if real < size:
                part = torch.cat([part, part.new_zeros((size - real, *part.shape[1:]))])
            outs.append(fn(part)[:real])
        return torch.cat(outs)

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.c.clip_tokenizer.model_max_length)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Text latents (B, 77, text_dim) and, per prompt, whether it was cut to the CLIP context length.

        A prompt repeated in the batch (several samples of one input) is encoded once.
        """
        unique = list(dict.fromkeys(prompts))
        row_of = {prompt: row for row, prompt in enumerate(unique)}
        tokenizer = self.c.clip_tokenizer
        limit = self.max_prompt_tokens
        full_lengths = [len(ids) for ids in tokenizer(unique, truncation=False, verbose=False).input_ids]
        ids = tokenizer(unique, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        hidden = self.c.text_encoder(ids.input_ids.to(self.device))[0]
        latents = self.c.text_decoder.encode(hidden.to(self.dtype)).float()
        rows = [row_of[prompt] for prompt in prompts]
        return latents[rows], [full_lengths[row] > limit for row in rows]

    def prompt_seen(self, prompt: str) -> str:
        """The part of ``prompt`` the text encoder sees: the prefix its first ``max_prompt_tokens`` tokens
        (special tokens included) cover, cut from the original text (for prompts that are too long)."""
        encoded = self.c.clip_tokenizer(
            prompt, truncation=True, max_length=self.max_prompt_tokens, return_offsets_mapping=True
        )
        ends = [end for start, end in encoded["offset_mapping"] if end > start]
        return prompt[: max(ends, default=0)]

    @torch.inference_mode()
    def encode_images(
        self, pixels: list[np.ndarray], noise: NoiseSource
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(VAE latents (B, C, h, w) sampled from the posterior, CLIP image embeddings (B, 1, d))."""
        batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
        batch = (batch * 2.0 - 1.0).to(self.device, self.dtype)
        moments = self._chunked(lambda x: self.c.vae.encode(x).latent_dist.parameters, batch)
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # as diffusers' DiagonalGaussianDistribution
        eps = noise.draw(tuple(mean.shape[1:])).to(mean.dtype)
        img_vae = (mean + std * eps) * self.c.vae.config.scaling_factor
        images = [Image.fromarray(p) for p in pixels]
        pixel_values = self.c.clip_image_processor(images=images, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(self.device, self.dtype)
        embeds = self._chunked(lambda x: self.c.image_encoder(pixel_values=x).image_embeds, pixel_values)
        return img_vae.float(), embeds.unsqueeze(1).float()

    @torch.inference_mode()
    def decode_images(self, img_vae: torch.Tensor) -> list[np.ndarray]:
        """VAE latents -> uint8 (H, W, 3) images."""
        vae = self.c.vae
        latents = (img_vae / vae.config.scaling_factor).to(self.dtype)
        decoded = self._chunked(lambda z: vae.decode(z, return_dict=False)[0], latents)
        images = (decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return list((images * 255).round().astype(np.uint8))

    @torch.inference_mode()
    def decode_captions(self, text: torch.Tensor, *, num_beams: int, max_new_tokens: int) -> list[str]:
        """Text latents -> captions, one batched beam search."""
        tokenizer = self.c.text_tokenizer
        tokens = self.c.text_decoder.generate(
            text.to(self.dtype),
            eos_token_id=tokenizer.eos_token_id,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
        )
        return [s.strip() for s in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
