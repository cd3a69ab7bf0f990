"""The engine's public face: one object, one call per mode, a batch of records in, one ``Result`` per record out.

    engine = UniDiffuserEngine.from_pretrained("s3://models/unidiffuser-v1", steps=25, device="cuda")
    results = engine.t2i(["a red circle on a grey background"], seeds=[7])

Bad records (empty prompt, undecodable image, ...) come back as ``Result.error`` without affecting the rest
of the batch; a record's output depends only on its input, its seed and the config, never on its batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from unidiffuser import modes
from unidiffuser.checkpoint import read_checkpoint_resolution, resolution_problem, resolve_checkpoint
from unidiffuser.codecs import Codecs
from unidiffuser.components import Components, load_components
from unidiffuser.config import EngineConfig, EngineConfigError, Mode, ModeInput
from unidiffuser.inputs import InputError, check_prompt, prepare_image
from unidiffuser.noise import RecordNoise
from unidiffuser.results import Result

log = logging.getLogger(__name__)
Prepared = TypeVar("Prepared")
BatchWork = Callable[[list[Any], RecordNoise], list[Result]]


class UniDiffuserEngine:
    """UniDiffuser on one device: t2i, i2t, joint, image, text, i2t2i, t2i2t, chain and interpolate."""

    def __init__(self, components: Components, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self._check_config(components)
        self.device = self.config.torch_device()
        dtype = self.config.torch_dtype
        self.components = components
        for module in (components.uvit, components.vae, components.text_encoder, components.image_encoder,
                       components.text_decoder):  # fmt: skip
            module.to(self.device).eval().requires_grad_(False)
            if dtype != torch.float32:
                module.to(dtype)
        components.uvit.fuse_qkv()
        uvit = torch.compile(components.uvit) if self.config.compile else components.uvit
        self.denoiser = modes.Denoiser(
            uvit, components.uvit.config, data_type=self.config.data_type, dtype=dtype
        )
        self.codecs = Codecs(components, device=self.device, dtype=dtype)
        self._empty_text: torch.Tensor | None = None

    @classmethod
    def from_pretrained(
        cls,
        uri: str | os.PathLike,
        config: EngineConfig | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict[str, Any] | None = None,
        identity: str | None = None,
        **overrides: Any,
    ) -> UniDiffuserEngine:
        """Load a diffusers-layout checkpoint from a local folder or any fsspec URI (cached once per node);
        ``identity`` pins its version (see ``unidiffuser.checkpoint.resolve_checkpoint``)."""
        if overrides:
            values = {**(config.model_dump() if config else {}), **overrides}
            try:
                config = EngineConfig.build(**values)
            except EngineConfigError as exc:
                raise EngineConfigError(
                    "; ".join(
                        [str(exc), *_resolution_problem(uri, values.get("resolution"), storage_options)]
                    )
                ) from None
        path = resolve_checkpoint(
            uri, cache_dir=cache_dir, storage_options=storage_options, identity=identity
        )
        return cls(load_components(path), config)

    def _check_config(self, components: Components) -> None:
        cfg = self.config
        problems = []
        resolution = resolution_problem(cfg.resolution, components.resolution)
        if resolution is not None:
            problems.append(resolution)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            problems.append(f"device {cfg.device!r} requested but CUDA is not available")
        if (
            cfg.caption_max_tokens + components.uvit.config.num_text_tokens
            > components.text_decoder.config.get("n_positions", 1024)
        ):
            problems.append("caption_max_tokens + 77 exceeds the caption decoder's n_positions")
        if problems:
            raise EngineConfigError("invalid engine config: " + "; ".join(problems))

    # ----------------------------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.components.resolution

    def _context(self, noise: RecordNoise, *, guidance: float | None = None) -> modes.SamplingContext:
        cfg, uvit_cfg = self.config, self.components.uvit.config
        latent = uvit_cfg.sample_size
        return modes.SamplingContext(
            denoiser=self.denoiser,
            noise=noise,
            scheduler_config=self.components.scheduler_config,
            steps=cfg.steps,
            guidance_scale=cfg.guidance_scale if guidance is None else guidance,
            vae_shape=(uvit_cfg.in_channels, latent, latent),
            clip_shape=(1, uvit_cfg.clip_img_dim),
            text_shape=(uvit_cfg.num_text_tokens, uvit_cfg.text_dim),
            max_timestep=int(self.components.scheduler_config.get("num_train_timesteps", 1000)),
        )

    def _run_batched(
        self,
        items: Sequence[Any],
        seeds: Sequence[int] | None,
        prepare: Callable[[Any], Any],
        work: BatchWork,
    ) -> list[Result]:
        """Check each record, then run the good ones in micro-batches; a failing batch is retried per record."""
        seeds = list(range(len(items))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(items):
            raise ValueError(f"got {len(items)} inputs but {len(seeds)} seeds")
        results: list[Result | None] = [None] * len(items)
        good: list[tuple[int, Any]] = []
        for i, item in enumerate(items):
            try:
                good.append((i, prepare(item)))
            except InputError as exc:
                results[i] = Result.failed(str(exc))
        size = self.config.batch_size
        for start in range(0, len(good), size):
            chunk = good[start : start + size]
            for i, result in zip(
                [i for i, _ in chunk], self._work_or_isolate(chunk, seeds, work), strict=True
            ):
                results[i] = result
        return results  # type: ignore[return-value]

    def _work_or_isolate(
        self, chunk: list[tuple[int, Any]], seeds: list[int], work: BatchWork
    ) -> list[Result]:
        noise = lambda idx: RecordNoise([seeds[i] for i in idx], self.device, self.config.torch_dtype)  # noqa: E731
        try:
            with torch.inference_mode():
                return work([p for _, p in chunk], noise([i for i, _ in chunk]))
        except (torch.cuda.OutOfMemoryError, RuntimeError, ValueError) as exc:
            if len(chunk) == 1:
                log.exception("engine failed on a record")
                return [Result.failed(f"engine error: {type(exc).__name__}: {exc}")]
            log.warning("batch of %d failed (%s); retrying record by record", len(chunk), exc)
            return [self._work_or_isolate([item], seeds, work)[0] for item in chunk]

    # --- input preparation --------------------------------------------------------------------------------------
    def _prepare_image(self, item: Any) -> tuple[np.ndarray, list[str]]:
        prepared = prepare_image(
            item,
            self.resolution,
            max_pixels=self.config.max_image_pixels,
            min_side=self.config.min_image_side,
        )
        return prepared.pixels, prepared.flags

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
        latents, truncated = self.codecs.encode_prompts(prompts)
        return latents, [["prompt_truncated"] if cut else [] for cut in truncated]

    def _prompt_used(self, prompt: str, flags: list[str]) -> str | None:
        """What the model saw of a truncated prompt (None for prompts used whole)."""
        return self.codecs.prompt_seen(prompt) if "prompt_truncated" in flags else None

    def _empty_prompt_latent(self) -> torch.Tensor | None:
        if self.config.t2i_cfg_mode != "empty_token":
            return None
        if self._empty_text is None:
            self._empty_text = self.codecs.encode_prompts([""])[0]
        return self._empty_text

    def _captions(self, text: torch.Tensor) -> list[str]:
        return self.codecs.decode_captions(
            text, num_beams=self.config.caption_beams, max_new_tokens=self.config.caption_max_tokens
        )

    # --- modes ----------------------------------------------------------------------------------------------------
    def t2i(self, prompts: Sequence[str], seeds: Sequence[int] | None = None) -> list[Result]:
        """Text to image."""

        def work(batch: list[str], noise: RecordNoise) -> list[Result]:
            text, flags = self._encode_prompts(batch)
            img_vae, _ = modes.t2i(self._context(noise), text, self._empty_prompt_latent())
            return [
                Result(image=im, flags=f, prompt_used=self._prompt_used(p, f))
                for im, f, p in zip(self.codecs.decode_images(img_vae), flags, batch, strict=True)
            ]

        return self._run_batched(prompts, seeds, check_prompt, work)

    def i2t(self, images: Sequence[Any], seeds: Sequence[int] | None = None) -> list[Result]:
        """Image to caption. Images: encoded bytes, PIL images or uint8 arrays, any size and colour mode."""

        def work(batch: list[tuple[np.ndarray, list[str]]], noise: RecordNoise) -> list[Result]:
            img_vae, img_clip = self.codecs.encode_images([p for p, _ in batch], noise)
            captions = self._captions(modes.i2t(self._context(noise), img_vae, img_clip))
            return [Result(text=c, flags=f) for c, (_, f) in zip(captions, batch, strict=True)]

        return self._run_batched(images, seeds, self._prepare_image, work)

    def joint(self, seeds: Sequence[int]) -> list[Result]:
        """Image-caption pairs from nothing, one per seed."""

        def work(batch: list[None], noise: RecordNoise) -> list[Result]:
            img_vae, _, text = modes.joint(self._context(noise))
            images, captions = self.codecs.decode_images(img_vae), self._captions(text)
            return [Result(image=i, text=c) for i, c in zip(images, captions, strict=True)]

        return self._run_batched([None] * len(seeds), seeds, lambda x: x, work)

    def image(self, seeds: Sequence[int]) -> list[Result]:
        """Unconditional images, one per seed."""

        def work(batch: list[None], noise: RecordNoise) -> list[Result]:
            img_vae, _ = modes.image(self._context(noise))
            return [Result(image=i) for i in self.codecs.decode_images(img_vae)]

        return self._run_batched([None] * len(seeds), seeds, lambda x: x, work)

    def text(self, seeds: Sequence[int]) -> list[Result]:
        """Unconditional captions, one per seed."""

        def work(batch: list[None], noise: RecordNoise) -> list[Result]:
            return [Result(text=c) for c in self._captions(modes.text(self._context(noise)))]

        return self._run_batched([None] * len(seeds), seeds, lambda x: x, work)

    def i2t2i(self, images: Sequence[Any], seeds: Sequence[int] | None = None) -> list[Result]:
        """Image variation: image -> text latent -> image (the caption is never decoded in between)."""

        def work(batch: list[tuple[np.ndarray, list[str]]], noise: RecordNoise) -> list[Result]:
            ctx = self._context(noise)
            text = modes.i2t(ctx, *self.codecs.encode_images([p for p, _ in batch], noise))
            img_vae, _ = modes.t2i(ctx, text, self._empty_prompt_latent())
            images_out = self.codecs.decode_images(img_vae)
            return [Result(image=i, flags=f) for i, (_, f) in zip(images_out, batch, strict=True)]

        return self._run_batched(images, seeds, self._prepare_image, work)

    def t2i2t(self, prompts: Sequence[str], seeds: Sequence[int] | None = None) -> list[Result]:
        """Text variation: text -> image latents -> caption (the image is never decoded in between)."""

        def work(batch: list[str], noise: RecordNoise) -> list[Result]:
            ctx = self._context(noise)
            text, flags = self._encode_prompts(batch)
            img_vae, img_clip = modes.t2i(ctx, text, self._empty_prompt_latent())
            captions = self._captions(modes.i2t(ctx, img_vae, img_clip))
            return [
                Result(text=c, flags=f, prompt_used=self._prompt_used(p, f))
                for c, f, p in zip(captions, flags, batch, strict=True)
            ]

        return self._run_batched(prompts, seeds, check_prompt, work)

    def chain(
        self, inputs: Sequence[Any], seeds: Sequence[int] | None = None, hops: int | None = None
    ) -> list[Result]:
        """Jump between modalities ``hops`` times (a string starts from text, anything else from an image);
        ``Result.hops`` holds every hop decoded, ``Result.image``/``text`` the last of each."""
        hops = self.config.chain_hops if hops is None else hops
        if hops < 1:
            raise ValueError(f"chain needs hops >= 1, got {hops}")
        seeds = list(range(len(inputs))) if seeds is None else list(seeds)
        if len(seeds) != len(inputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(seeds)} seeds")
        results: list[Result | None] = [None] * len(inputs)
        from_text = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        from_image = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        for indices, prepare, start in (
            (from_text, check_prompt, "text"),
            (from_image, self._prepare_image, "image"),
        ):
            work = self._chain_work(start, hops)
            subset = self._run_batched(
                [inputs[i] for i in indices], [seeds[i] for i in indices], prepare, work
            )
            for i, result in zip(indices, subset, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _chain_work(self, start: str, hops: int) -> BatchWork:
        def work(batch: list[Any], noise: RecordNoise) -> list[Result]:
            ctx = self._context(noise)
            steps: list[list[Result]] = []
            flags: list[list[str]]
            image_latents: tuple[torch.Tensor, ...] | None
            if start == "text":
                text, flags = self._encode_prompts(batch)
                image_latents = None
            else:
                image_latents = self.codecs.encode_images([p for p, _ in batch], noise)
                flags = [f for _, f in batch]
            for _ in range(hops):
                if image_latents is not None:
                    text = modes.i2t(ctx, *image_latents)
                    steps.append([Result(text=c) for c in self._captions(text)])
                    image_latents = None
                else:
                    image_latents = tuple(modes.t2i(ctx, text, self._empty_prompt_latent()))
                    steps.append([Result(image=i) for i in self.codecs.decode_images(image_latents[0])])
            return [_chain_result([s[r] for s in steps], flags[r]) for r in range(len(batch))]

        return work

    def interpolate(
        self, pairs: Sequence[tuple[Any, Any]], seeds: Sequence[int] | None = None, frames: int | None = None
    ) -> list[Result]:
        """For each (image_a, image_b): ``frames`` images moving from a to b (``Result.frames``, ends included).

        Method: both images are DDIM-inverted to noise, conditioned on their own caption latents (from i2t);
        frame w slerps the two noises, lerps the two caption latents and DDIM-samples t2i from there."""
        frames = self.config.interpolation_frames if frames is None else frames
        if frames < 2:
            raise ValueError(f"interpolate needs frames >= 2 (both ends included), got {frames}")
        weights = [i / (frames - 1) for i in range(frames)]

        def prepare(pair: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError("interpolate needs a pair of images (image_a, image_b)")
            (a, fa), (b, fb) = self._prepare_image(pair[0]), self._prepare_image(pair[1])
            return a, b, fa + fb

        def work(batch: list[tuple[np.ndarray, np.ndarray, list[str]]], noise: RecordNoise) -> list[Result]:
            ctx = self._context(noise)
            firsts, seconds = [a for a, _, _ in batch], [b for _, b, _ in batch]
            ends = [self.codecs.encode_images(images, noise) for images in (firsts, seconds)]
            texts = [modes.i2t(ctx, *latents) for latents in ends]
            sampled = modes.interpolate(ctx, (list(ends[0]), list(ends[1])), (texts[0], texts[1]), weights)
            decoded = [self.codecs.decode_images(parts[0]) for parts in sampled]
            return [Result(image=decoded[-1][r], frames=[d[r] for d in decoded], flags=batch[r][2])
                    for r in range(len(batch))]  # fmt: skip

        return self._run_batched(pairs, seeds, prepare, work)

    def run(
        self, inputs: Sequence[Any] | None, seeds: Sequence[int], mode: Mode | str | None = None
    ) -> list[Result]:
        """Dispatch to the mode's call (``config.mode`` unless given); ``inputs`` is ignored for modes from nothing."""
        mode = Mode(mode or self.config.mode)
        if mode.input == ModeInput.NOTHING:
            return getattr(self, mode.value)(seeds)
        if inputs is None:
            raise ValueError(f"mode {mode.value} needs inputs")
        return getattr(self, mode.value)(inputs, seeds)


def _resolution_problem(uri: str | os.PathLike, resolution: Any, storage_options: dict | None) -> list[str]:
    """The checkpoint-dependent resolution check, from config files only (for reporting with field errors)."""
    if not isinstance(resolution, int):
        return []
    try:
        problem = resolution_problem(
            resolution, read_checkpoint_resolution(uri, storage_options=storage_options)
        )
    except (OSError, ValueError):
        return []
    return [] if problem is None else [problem]


def _chain_result(hops: list[Result], flags: list[str]) -> Result:
    last_image = next((h.image for h in reversed(hops) if h.image is not None), None)
    last_text = next((h.text for h in reversed(hops) if h.text is not None), None)
    return Result(image=last_image, text=last_text, hops=hops, flags=flags)
