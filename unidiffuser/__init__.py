"""UniDiffuser engine: the U-ViT, its sampler and every mode, batched and deterministic. Knows nothing of Ray.

Names are imported lazily, so ``import unidiffuser`` (and the CLIs that only need its config types) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointChangedError": "unidiffuser.checkpoint",
    "CheckpointError": "unidiffuser.checkpoint",
    "load_components": "unidiffuser.components",
    "resolve_checkpoint": "unidiffuser.checkpoint",
    "EngineConfig": "unidiffuser.config",
    "EngineConfigError": "unidiffuser.config",
    "Mode": "unidiffuser.config",
    "UniDiffuserEngine": "unidiffuser.engine",
    "InputError": "unidiffuser.inputs",
    "prepare_image": "unidiffuser.inputs",
    "derive_seed": "unidiffuser.seeds",
    "Result": "unidiffuser.results",
    "write_tiny_checkpoint": "unidiffuser.tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unidiffuser' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
