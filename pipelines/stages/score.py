"""Stage 3 (and, for captioning jobs with input heads, stage 1b): the judges, each its own actor pool.

``ClipScoreStage`` (after generate): CLIP embeddings of each record's image and text, their cosine similarity,
and every output score head's score. What is compared depends on the mode: image-text (t2i, i2t, joint),
output-input image (i2t2i: how much the variation keeps), prompt-caption text (t2i2t). Records with nothing
to compare keep a null score. Both L2-normalised embeddings are kept for the clip-retrieval output.

``InputJudgeStage`` (before generate, i2t / i2t2i): the input score heads on the input images, and their bounds
applied at once, so an input rejected there costs no model time.

A head's score is a column of its own (``aesthetic``, ``punsafe``, ...). A score that is NaN or infinite makes
its record an error row with the reason, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.heads.base import ImageHead, ScoreHead
from pipelines.heads.bounds import bad_score_reason
from pipelines.heads.spec import HeadSpec
from pipelines.pixels import from_bytes
from pipelines.stages.filter import FilterSpec, filter_batch
from pipelines.stages.watermark import WatermarkSpec, watermark_batch
from unidiffuser.checkpoint import resolve_checkpoint
from unidiffuser.config import Mode

# the models (torch, transformers) load in the actors; the driver imports these classes only
if TYPE_CHECKING:
    from unidiffuser.clip_embedder import ClipEmbedder


def _clip_embedder(config: PipelineConfig, identity: str | None, device: str) -> ClipEmbedder:
    """The job's CLIP model on ``device``, at the version it was planned with (``identity``)."""
    from unidiffuser.clip_embedder import ClipEmbedder

    if config.clip.model is None:  # the spec's validation requires it wherever a stage embeds
        raise ValueError("clip.model is not set: CLIP embeddings need a CLIP model folder")
    path = resolve_checkpoint(
        config.clip.model, storage_options=config.storage.storage_options(), identity=identity
    )
    return ClipEmbedder(path, device, batch_size=config.clip.batch_size)


class HeadScorer:
    """The job's score heads of one side (output or input images), loaded once per actor at the versions the
    job was planned with."""

    def __init__(
        self, specs: list[HeadSpec], identities: Mapping[str, str], config: PipelineConfig, device: str
    ):
        from pipelines.heads.load import load_head

        options = config.storage.storage_options()
        self.specs = specs
        self.heads = [
            load_head(s, storage_options=options, identity=identities.get(s.name), device=device)
            for s in specs
        ]

    @staticmethod
    def _score(head: ScoreHead, images: list[np.ndarray], embeddings: np.ndarray | None) -> np.ndarray:
        if isinstance(head, ImageHead):
            return head.score_images(images)
        if embeddings is None:
            raise ValueError(f"head {head.name!r} scores CLIP embeddings, and none were computed")
        return head.score_embeddings(embeddings)

    @property
    def needs_embeddings(self) -> bool:
        return any(h.input == "embedding" for h in self.heads)

    def score(
        self, out: pd.DataFrame, rows: list[int], images: list[np.ndarray], embeddings: np.ndarray | None
    ) -> pd.DataFrame:
        """``out`` with each head's column (null outside ``rows``), and records whose score is not finite
        turned into error rows."""
        out = out.copy()
        status, reasons = out[r.STATUS].tolist(), out[r.REASON].tolist()
        for spec, head in zip(self.specs, self.heads, strict=True):
            column = spec.column or spec.name
            values: list[float | None] = [None] * len(out)
            if rows:
                scores = self._score(head, images, embeddings)
                for i, value in zip(rows, scores.tolist(), strict=True):
                    values[i] = float(value)
                    if not np.isfinite(value) and status[i] == r.Status.OK.value:
                        status[i], reasons[i] = r.Status.ERROR.value, bad_score_reason(column, value)
            out[column] = values
        out[r.STATUS], out[r.REASON] = status, reasons
        return out


def _device(gpus: float) -> str:
    return "cuda" if gpus > 0 else "cpu"


class ClipScoreStage:
    """Callable class for ``Dataset.map_batches``; loads the CLIP model and the output heads once per actor."""

    def __init__(
        self,
        config: PipelineConfig,
        identity: str | None = None,
        head_identities: Mapping[str, str] | None = None,
        watermark: WatermarkSpec | None = None,
    ):
        """``identity`` / ``head_identities`` pin the CLIP model and heads versions the job was planned with;
        ``watermark`` is embedded in the generated images first, so they are judged as they are written."""
        device = _device(config.resources.clip_gpus_per_actor)
        self.clip = _clip_embedder(config, identity, device)
        self.heads = HeadScorer(config.curation.heads_for("output"), head_identities or {}, config, device)
        self.mode = config.model.mode
        self.watermark = watermark

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy() if self.watermark is None else watermark_batch(batch, self.watermark)
        n = len(out)
        ok = [i for i in range(n) if out[r.STATUS].iloc[i] == r.Status.OK.value]
        img_emb: list[np.ndarray | None] = [None] * n
        text_emb: list[np.ndarray | None] = [None] * n
        scores: list[float | None] = [None] * n
        images = self._judged_images(out)
        judged = {i: image for i in ok if (image := images[i]) is not None}
        with_image = list(judged)
        pixels = [from_bytes(image) for image in judged.values()]
        image_matrix = self.clip.images(pixels)
        for i, e in zip(with_image, image_matrix, strict=True):
            img_emb[i] = e
        with_text = [i for i in ok if not r.missing(out[r.TEXT].iloc[i]) and out[r.TEXT].iloc[i]]
        for i, e in zip(with_text, self.clip.texts([out[r.TEXT].iloc[i] for i in with_text]), strict=True):
            text_emb[i] = e
        for i, reference in self._references(out, ok, text_emb).items():
            first = img_emb[i] if img_emb[i] is not None else text_emb[i]
            if first is not None:
                scores[i] = float(np.dot(first, reference))
        # plain float lists: an Arrow list<float> column (arrays mixed with None would be pickled)
        out[r.IMAGE_EMBEDDING] = [None if e is None else e.tolist() for e in img_emb]
        out[r.TEXT_EMBEDDING] = [None if e is None else e.tolist() for e in text_emb]
        out[r.CLIP_SCORE] = scores
        return self.heads.score(out, with_image, pixels, image_matrix)

    def _judged_images(self, out: pd.DataFrame) -> list[bytes | None]:
        """The image each record is judged by: the generated one, or for captioning the model input the
        caption was made from."""
        column = r.OUT_PIXELS if self.mode.makes_image else r.PIXELS if self.mode == Mode.I2T else None
        if column is None:
            return [None] * len(out)
        return [None if r.missing(p) else p for p in out[column]]

    def _references(self, out: pd.DataFrame, ok: list[int], text_emb: list) -> dict[int, np.ndarray]:
        """What each record's image (or, for t2i2t, caption) is compared with."""
        if self.mode == Mode.I2T2I:  # the variation against its input image
            rows = [i for i in ok if not r.missing(out[r.PIXELS].iloc[i])]
            return dict(
                zip(rows, self.clip.images([from_bytes(out[r.PIXELS].iloc[i]) for i in rows]), strict=True)
            )
        if self.mode == Mode.T2I2T:  # the new caption against the prompt
            rows = [i for i in ok if text_emb[i] is not None]
            return dict(zip(rows, self.clip.texts([out[r.PROMPT].iloc[i] for i in rows]), strict=True))
        return {i: text_emb[i] for i in ok if text_emb[i] is not None}


class InputJudgeStage:
    """Callable class for ``Dataset.map_batches``: the input heads on each record's input image, then their
    bounds (``FilterSpec.of(config, "input")``), before any model work."""

    def __init__(
        self,
        config: PipelineConfig,
        identity: str | None = None,
        head_identities: Mapping[str, str] | None = None,
    ):
        device = _device(config.resources.clip_gpus_per_actor)
        self.heads = HeadScorer(config.curation.heads_for("input"), head_identities or {}, config, device)
        self.clip = _clip_embedder(config, identity, device) if self.heads.needs_embeddings else None
        self.bounds = FilterSpec.of(config, "input")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ok = [i for i in range(len(batch)) if batch[r.STATUS].iloc[i] == r.Status.OK.value]
        rows = [i for i in ok if not r.missing(batch[r.PIXELS].iloc[i])]
        pixels = [from_bytes(batch[r.PIXELS].iloc[i]) for i in rows]
        embeddings = self.clip.images(pixels) if self.clip is not None and rows else None
        return filter_batch(self.heads.score(batch, rows, pixels, embeddings), self.bounds)
