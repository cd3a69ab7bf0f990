"""UniDiffuser engine: the U-ViT, its sampler and every mode, batched and deterministic. Knows nothing of Ray."""

from unidiffuser.checkpoint import CheckpointError, load_components, resolve_checkpoint
from unidiffuser.config import EngineConfig, EngineConfigError, Mode
from unidiffuser.engine import UniDiffuserEngine
from unidiffuser.inputs import InputError, prepare_image
from unidiffuser.noise import derive_seed
from unidiffuser.results import Result
from unidiffuser.tiny import write_tiny_checkpoint

__all__ = [
    "CheckpointError",
    "EngineConfig",
    "EngineConfigError",
    "InputError",
    "Mode",
    "Result",
    "UniDiffuserEngine",
    "derive_seed",
    "load_components",
    "prepare_image",
    "resolve_checkpoint",
    "write_tiny_checkpoint",
]
