"""Score heads: aesthetic, not-safe and watermark scores for every record, next to the CLIP score.

    spec = HeadSpec(name="aesthetic", kind="laion_aesthetic", uri="s3://models/heads/aesthetic-v2", min=5.0)
    problems = validate_head(spec, clip_embedding_dim("s3://models/clip-l14", opts), opts)   # validate
    identity = head_identity(spec, opts)                                                     # plan
    head = load_head(spec, storage_options=opts, identity=identity)                          # each actor
    scores = head.score_embeddings(img_emb)        # embedding heads (head.input == "embedding")
    scores = head.score_images(images)             # image heads (head.input == "image")
    errors = bad_scores(scores)                    # NaN / inf -> error rows
    reasons = bound_reasons(spec.column, float(scores[i]), spec.min, spec.max)

Formats: LAION's published heads (``laion``), the generic MLP head (``mlp``: ``head.json`` +
``model.safetensors``, written by ``save_mlp_head``) and transformers image classifiers (``classifier``).

Names are imported lazily, so ``pipelines.heads.spec`` (and a job spec that embeds it) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingHead": "pipelines.heads.base",
    "HeadError": "pipelines.heads.base",
    "ImageHead": "pipelines.heads.base",
    "ScoreHead": "pipelines.heads.base",
    "bad_score_reason": "pipelines.heads.bounds",
    "bad_scores": "pipelines.heads.bounds",
    "bound_reasons": "pipelines.heads.bounds",
    "head_identity": "pipelines.heads.identity",
    "load_head": "pipelines.heads.load",
    "MLPHeadConfig": "pipelines.heads.mlp_config",
    "build_mlp": "pipelines.heads.mlp",
    "save_mlp_head": "pipelines.heads.mlp",
    "clip_embedding_dim": "pipelines.heads.remote",
    "HeadSpec": "pipelines.heads.spec",
    "default_column": "pipelines.heads.spec",
    "validate_head": "pipelines.heads.validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines.heads' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
