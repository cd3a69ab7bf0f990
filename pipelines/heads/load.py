"""Load a head from its spec: the folder comes through ``unidiffuser.resolve_checkpoint``, so a remote head is
copied once per machine and version into the node-local cache and pinned by identity exactly like the
UniDiffuser checkpoint and the CLIP model (``unidiffuser.checkpoint.checkpoint_identity`` of its folder)."""

from __future__ import annotations

import os
from typing import Any

import torch

from pipelines.heads.base import HeadError, ScoreHead
from pipelines.heads.classifier import ImageClassifierHead
from pipelines.heads.identity import head_identity
from pipelines.heads.laion import load_laion_head
from pipelines.heads.mlp import load_mlp_head
from pipelines.heads.spec import HeadSpec
from unidiffuser import CheckpointError, resolve_checkpoint
from unidiffuser.checkpoint import CheckpointChangedError


def load_head(
    spec: HeadSpec,
    *,
    storage_options: dict[str, Any] | None = None,
    identity: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
) -> ScoreHead:
    """The head ``spec`` names, ready to score. ``identity`` pins the version (default: the current one);
    ``batch_size``: images per forward of a classifier head."""
    identity = identity or head_identity(spec, storage_options)
    try:
        folder = resolve_checkpoint(
            spec.uri, storage_options=storage_options, identity=identity, cache_dir=cache_dir
        )
    except (CheckpointError, CheckpointChangedError) as exc:
        raise HeadError(f"head {spec.name!r}: {exc}") from exc
    if spec.kind == "mlp":
        return load_mlp_head(folder, name=spec.name, identity=identity, device=device)
    if spec.kind == "classifier":
        assert spec.label is not None  # the spec requires it
        return ImageClassifierHead(
            folder, name=spec.name, label=spec.label, identity=identity, device=device, batch_size=batch_size
        )
    return load_laion_head(folder, kind=spec.kind, name=spec.name, identity=identity, device=device)
