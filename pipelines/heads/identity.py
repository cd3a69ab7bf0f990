"""A head's version: the identity of its folder's files, taken when a job is planned (on the driver, which loads
no head) and pinned in every actor that loads it (``pipelines.heads.load.load_head``)."""

from __future__ import annotations

from typing import Any

from pipelines.heads.base import HeadError
from pipelines.heads.spec import HeadSpec
from unidiffuser import CheckpointError
from unidiffuser.checkpoint import checkpoint_identity


def head_identity(spec: HeadSpec, storage_options: dict[str, Any] | None = None) -> str:
    """The version of a head's files (one listing, nothing copied): take it when a job is planned and pass it
    to ``load_head`` in every actor, so a head replaced during the job fails it instead of mixing versions."""
    try:
        return checkpoint_identity(spec.uri, storage_options=storage_options)
    except CheckpointError as exc:
        raise HeadError(f"head {spec.name!r}: no head folder at {spec.uri}") from exc
