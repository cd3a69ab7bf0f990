"""Stage 3, its own actor pool: CLIP embeddings of each record's image and text, and their cosine similarity.

What is compared depends on the mode: image-text (t2i, i2t, joint), output-input image (i2t2i: how much
the variation keeps), prompt-caption text (t2i2t). Records with nothing to compare keep a null score.
Both L2-normalised embeddings are kept for the clip-retrieval output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import CLIPModel

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.pixels import from_bytes
from unidiffuser import Mode, resolve_checkpoint
from unidiffuser.checkpoint import load_clip_processor


class ClipScoreStage:
    """Callable class for ``Dataset.map_batches``; loads the CLIP model once per actor."""

    def __init__(self, config: PipelineConfig, identity: str | None = None):
        """``identity`` pins the CLIP model version the job was planned with."""
        path = resolve_checkpoint(
            config.clip.model, storage_options=config.storage.storage_options(), identity=identity
        )
        self.device = torch.device("cuda" if config.resources.clip_gpus_per_actor > 0 else "cpu")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.processor = load_clip_processor(path)
        self.batch_size = config.clip.batch_size
        self.mode = config.model.mode

    @torch.no_grad()
    def _image_embeds(self, images: list[np.ndarray]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            part = [Image.fromarray(i) for i in images[start : start + self.batch_size]]
            inputs = self.processor(images=part, return_tensors="pt").to(self.device)
            chunks.append(_features(self.model.get_image_features(**inputs)))
        return _normalise(torch.cat(chunks)) if chunks else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def _text_embeds(self, texts: list[str]) -> np.ndarray:
        """One row per text; a text repeated in the batch (samples of one prompt) is encoded once."""
        unique = list(dict.fromkeys(texts))
        chunks = []
        for start in range(0, len(unique), self.batch_size):
            inputs = self.processor(
                text=unique[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            chunks.append(_features(self.model.get_text_features(**inputs)))
        if not chunks:
            return np.zeros((0, 0), np.float32)
        row_of = {text: row for row, text in enumerate(unique)}
        return _normalise(torch.cat(chunks))[[row_of[text] for text in texts]]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        n = len(out)
        ok = [i for i in range(n) if out[r.STATUS].iloc[i] == r.Status.OK.value]
        img_emb: list[np.ndarray | None] = [None] * n
        text_emb: list[np.ndarray | None] = [None] * n
        scores: list[float | None] = [None] * n
        images = self._judged_images(out)
        with_image = [i for i in ok if images[i] is not None]
        for i, e in zip(
            with_image, self._image_embeds([from_bytes(images[i]) for i in with_image]), strict=True
        ):
            img_emb[i] = e
        with_text = [i for i in ok if not r.missing(out[r.TEXT].iloc[i]) and out[r.TEXT].iloc[i]]
        for i, e in zip(with_text, self._text_embeds([out[r.TEXT].iloc[i] for i in with_text]), strict=True):
            text_emb[i] = e
        for i, reference in self._references(out, ok, text_emb).items():
            first = img_emb[i] if img_emb[i] is not None else text_emb[i]
            if first is not None:
                scores[i] = float(np.dot(first, reference))
        # plain float lists: an Arrow list<float> column (arrays mixed with None would be pickled)
        out[r.IMAGE_EMBEDDING] = [None if e is None else e.tolist() for e in img_emb]
        out[r.TEXT_EMBEDDING] = [None if e is None else e.tolist() for e in text_emb]
        out[r.CLIP_SCORE] = scores
        return out

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
                zip(rows, self._image_embeds([from_bytes(out[r.PIXELS].iloc[i]) for i in rows]), strict=True)
            )
        if self.mode == Mode.T2I2T:  # the new caption against the prompt
            rows = [i for i in ok if text_emb[i] is not None]
            return dict(zip(rows, self._text_embeds([out[r.PROMPT].iloc[i] for i in rows]), strict=True))
        return {i: text_emb[i] for i in ok if text_emb[i] is not None}


def _features(output: torch.Tensor | object) -> torch.Tensor:
    """transformers 5 returns the projected features as ``pooler_output``; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
