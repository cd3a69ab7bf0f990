"""The engine on CUDA (run where a GPU is present; skipped elsewhere): every dtype, determinism, and
agreement with the CPU float32 result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unidiffuser import UniDiffuserEngine

pytestmark = pytest.mark.gpu
PROMPTS = ["a red circle on a grey background", "a blue square at the top left"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_modes_run_and_are_deterministic(tiny_checkpoint: Path, dtype: str):
    engine = UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=4, device="cuda", dtype=dtype)
    first = engine.t2i(PROMPTS, seeds=[1, 2])
    again = engine.t2i(PROMPTS, seeds=[1, 2])
    assert all(r.ok and r.image.shape == (64, 64, 3) for r in first)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    captions = engine.i2t([r.image for r in first], seeds=[3, 4])
    assert all(r.ok and isinstance(r.text, str) for r in captions)
    assert all(r.ok for r in engine.joint(seeds=[5, 6]))


def test_cuda_float32_agrees_with_cpu(tiny_checkpoint: Path):
    cpu = UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=4).t2i(PROMPTS, seeds=[1, 2])
    gpu = UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=4, device="cuda").t2i(
        PROMPTS, seeds=[1, 2]
    )
    for a, b in zip(cpu, gpu, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2
