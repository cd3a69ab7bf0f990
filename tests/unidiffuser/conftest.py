"""Engine fixtures: tiny random checkpoints written by the project, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from unidiffuser import UniDiffuserEngine, write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v1 tiny checkpoint (data-type token)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-v1"), version=1)


@pytest.fixture(scope="session")
def tiny_checkpoint_v0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-v0"), version=0)


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Path) -> UniDiffuserEngine:
    """A float32 CPU engine on the tiny checkpoint with few steps (the sampler is the same at any count)."""
    return UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=4, batch_size=4)
