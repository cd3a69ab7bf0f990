"""Measured quality of a shapes-world checkpoint, through the real engine, judged without the model under test.

The judges are the world's ground truth, the pixel detector (``detector.detect``) and the caption parser
(``world.parse_caption``); the CLIP ROC AUC uses the trained CLIP scorer (``clip/`` in the checkpoint).
Every metric is a fraction of samples where the (shape, colour) of every object agrees:

- ``i2t``: the caption of a held-out image names its objects;
- ``t2i``: the image generated from a held-out caption shows the prompt's objects;
- ``joint``: the generated caption names the objects of the image generated with it;
- ``i2t2i`` / ``t2i2t``: the variation keeps the objects of the input image / prompt;
- ``clip_auc_t2i`` / ``clip_auc_i2t``: ROC AUC of the CLIP score separating matched (prompt, generated image) /
  (image, generated caption) pairs from shuffled ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shapes.clip import roc_auc
from shapes.detector import detect, matches
from shapes.world import Scene, ShapesWorld, parse_caption
from unidiffuser import EngineConfig, UniDiffuserEngine, load_components, resolve_checkpoint
from unidiffuser.clip_embedder import ClipEmbedder
from unidiffuser.components import Components

MODES = ("i2t", "t2i", "joint", "i2t2i", "t2i2t")


class ClipScorer:
    """The checkpoint's CLIP scorer: the pipeline's own embedder (``unidiffuser.clip_embedder``), so a score
    here is the score a job gives."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.embedder = ClipEmbedder(path, device)

    def scores(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities (len(images), len(texts))."""
        image = self.image_embeddings(images, batch_size=max(1, len(images)))
        text = self.embedder.texts(texts, batch_size=max(1, len(texts)))
        return torch.from_numpy(image @ text.T)

    def image_embeddings(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """L2-normalised image embeddings (n, projection_dim) float32, ``batch_size`` images per forward."""
        return self.embedder.images(images, batch_size=batch_size)

    def auc(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> float:
        """Matched (image i, text i) against shuffled (image i, text i + n/2) pairs."""
        n = len(texts)
        if n < 2:
            return float("nan")
        sims = self.scores(images, texts)
        return roc_auc(sims.diagonal(), sims[torch.arange(n), (torch.arange(n) + n // 2) % n])


@dataclass
class EvalSet:
    """Held-out samples: images, captions (prompts) and their ground truth."""

    images: list[np.ndarray]
    captions: list[str]
    scenes: list[Scene]

    @classmethod
    def draw(cls, world: ShapesWorld, count: int, split: str = "heldout", start: int = 0) -> EvalSet:
        samples = [world.sample(i, split) for i in range(start, start + count)]
        return cls([s.image for s in samples], [s.caption for s in samples], [s.scene for s in samples])


def _caption_ok(caption: str | None, scene: Scene) -> bool:
    return caption is not None and matches(parse_caption(caption).pairs, scene.pairs)


def _image_ok(image: np.ndarray | None, scene: Scene) -> bool:
    return image is not None and matches(detect(image).pairs, scene.pairs)


def _mean(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def evaluate(
    components: Components,
    data: EvalSet,
    *,
    guidance: float,
    steps: int,
    modes: Sequence[str] = MODES,
    scorer: ClipScorer | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """All metrics of ``modes`` for one sampling setting; also keeps a few examples."""
    engine = UniDiffuserEngine(
        components,
        EngineConfig(steps=steps, guidance_scale=guidance, device=device, batch_size=batch_size),
    )
    n = len(data.captions)
    seeds = [seed * 100_003 + i for i in range(n)]
    out: dict = {"guidance": guidance, "steps": steps, "samples": n}
    timings: dict[str, float] = {}
    examples: dict[str, list] = {}
    if "i2t" in modes:
        t0 = time.monotonic()
        captions = [r.text for r in engine.i2t(data.images, seeds)]
        timings["i2t"] = time.monotonic() - t0
        out["i2t"] = _mean([_caption_ok(c, s) for c, s in zip(captions, data.scenes, strict=True)])
        out["i2t_background"] = _mean(
            [c is not None and parse_caption(c).background == s.background for c, s in zip(captions, data.scenes, strict=True)]
        )  # fmt: skip
        examples["i2t"] = [
            {"truth": t, "caption": c} for t, c in zip(data.captions[:3], captions[:3], strict=True)
        ]
        if scorer is not None:
            out["clip_auc_i2t"] = scorer.auc(data.images, [c or "" for c in captions])
    if "t2i" in modes:
        t0 = time.monotonic()
        images = [r.image for r in engine.t2i(data.captions, seeds)]
        timings["t2i"] = time.monotonic() - t0
        found = [detect(i) if i is not None else None for i in images]
        out["t2i"] = _mean(
            [f is not None and matches(f.pairs, s.pairs) for f, s in zip(found, data.scenes, strict=True)]
        )
        out["t2i_background"] = _mean(
            [f is not None and f.background == s.background for f, s in zip(found, data.scenes, strict=True)]
        )
        out["t2i_all_attributes"] = _mean(
            [f is not None and _all_attributes(f.objects) == _all_attributes(s.objects)
             for f, s in zip(found, data.scenes, strict=True)]
        )  # fmt: skip
        examples["t2i"] = [
            {"prompt": p, "detected": f.pairs if f else None}
            for p, f in zip(data.captions[:3], found[:3], strict=True)
        ]
        if scorer is not None:
            ok = [i for i, im in enumerate(images) if im is not None]
            out["clip_auc_t2i"] = scorer.auc([images[i] for i in ok], [data.captions[i] for i in ok])
    if "joint" in modes:
        t0 = time.monotonic()
        results = engine.joint(seeds)
        timings["joint"] = time.monotonic() - t0
        hits = []
        for r in results:
            if r.image is None or r.text is None:
                hits.append(False)
                continue
            said = parse_caption(r.text).pairs
            hits.append(bool(said) and matches(detect(r.image).pairs, said))
        out["joint"] = _mean(hits)
        examples["joint"] = [
            {"caption": r.text, "detected": detect(r.image).pairs if r.image is not None else None}
            for r in results[:3]
        ]
    if "i2t2i" in modes:
        t0 = time.monotonic()
        images = [r.image for r in engine.i2t2i(data.images, seeds)]
        timings["i2t2i"] = time.monotonic() - t0
        out["i2t2i"] = _mean([_image_ok(i, s) for i, s in zip(images, data.scenes, strict=True)])
    if "t2i2t" in modes:
        t0 = time.monotonic()
        captions = [r.text for r in engine.t2i2t(data.captions, seeds)]
        timings["t2i2t"] = time.monotonic() - t0
        out["t2i2t"] = _mean([_caption_ok(c, s) for c, s in zip(captions, data.scenes, strict=True)])
        examples["t2i2t"] = [
            {"prompt": p, "caption": c} for p, c in zip(data.captions[:3], captions[:3], strict=True)
        ]
    out["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    out["examples"] = examples
    return out


def _all_attributes(objects) -> list[tuple]:
    return sorted((o.shape, o.colour, o.size, o.position) for o in objects)


def reference(data: EvalSet, scorer: ClipScorer | None) -> dict:
    """What the judges say about the ground truth itself (detector and parser should be perfect)."""
    ref = {
        "detector_on_real_images": _mean([_image_ok(i, s) for i, s in zip(data.images, data.scenes, strict=True)]),
        "parser_on_real_captions": _mean([_caption_ok(c, s) for c, s in zip(data.captions, data.scenes, strict=True)]),
    }  # fmt: skip
    if scorer is not None:
        ref["clip_auc_real_pairs"] = scorer.auc(data.images, data.captions)
    return ref


def load(checkpoint: str | Path) -> tuple[Components, ClipScorer | None]:
    path = resolve_checkpoint(checkpoint)
    scorer = ClipScorer(path / "clip") if (path / "clip" / "config.json").exists() else None
    return load_components(path), scorer
