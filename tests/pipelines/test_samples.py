"""Several samples per input: preprocess draws them (keys, seeds), the filter keeps the best, the config
refuses combinations that cannot mean anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.stages.filter import Bound, FilterSpec, filter_batch
from pipelines.stages.preprocess import draw_samples, preprocess_batch
from pipelines.stages.score import ClipScoreStage
from unidiffuser import derive_seed


def prompt_rows(prompts: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            r.KEY: list(prompts),
            r.SOURCE: "file:///in/prompts.txt",
            r.UNIT: 0,
            r.PROMPT: list(prompts.values()),
            r.IMAGE_BYTES: None,
            r.READ_ERROR: None,
        }
    )


def test_preprocess_draws_samples_with_own_keys_and_seeds() -> None:
    batch = prompt_rows({"a": "a red circle", "b": "  ", "a_1": "a blue square"})
    out = preprocess_batch(batch, job_seed=7, input_kind="prompts", resolution=64, max_image_pixels=10**6,
                           samples_per_input=2)  # fmt: skip
    assert out[r.KEY].tolist() == ["a_0", "a_1", "b_0", "b_1", "a_1_0", "a_1_1"]
    assert out[r.INPUT_KEY].tolist() == ["a", "a", "b", "b", "a_1", "a_1"]
    assert out[r.SAMPLE].tolist() == [0, 1] * 3
    assert out[r.SEED].tolist() == [derive_seed(7, k) for k in out[r.KEY]]
    assert out[r.STATUS].tolist() == ["ok", "ok", "error", "error", "ok", "ok"]
    assert out[r.REASON].tolist()[2:4] == ["input: empty prompt"] * 2
    assert out[r.PROMPT].tolist() == ["a red circle"] * 2 + ["  "] * 2 + ["a blue square"] * 2


def test_one_sample_keeps_the_input_key_and_seed() -> None:
    batch = prompt_rows({"x": "a green triangle", "y": "a cyan diamond"})
    out = preprocess_batch(batch, job_seed=3, input_kind="prompts", resolution=64, max_image_pixels=10**6)
    assert out[r.KEY].tolist() == out[r.INPUT_KEY].tolist() == ["x", "y"]
    assert out[r.SAMPLE].tolist() == [0, 0]
    assert out[r.SEED].tolist() == [derive_seed(3, "x"), derive_seed(3, "y")]


def test_sample_keys_never_collide() -> None:
    keys = ["x", "x_1", "x_1_0", "x_10", "x1", "_", "x_"]
    out = draw_samples(pd.DataFrame({r.KEY: keys}), 12)
    assert out[r.KEY].is_unique and len(out) == 12 * len(keys)


def scored_rows(rows: list[tuple[str, int, str, float | None]]) -> pd.DataFrame:
    """(input_key, sample, status, clip_score) per row."""
    return pd.DataFrame(
        {
            r.INPUT_KEY: [row[0] for row in rows],
            r.SAMPLE: [row[1] for row in rows],
            r.STATUS: [row[2] for row in rows],
            r.REASON: [None if row[2] == "ok" else "generate: failed" for row in rows],
            r.CLIP_SCORE: [row[3] for row in rows],
        }
    )


def test_keep_best_ranks_within_each_input_after_the_bounds() -> None:
    batch = scored_rows([
        ("a", 0, "ok", 0.30), ("a", 1, "ok", 0.50), ("a", 2, "ok", 0.40), ("a", 3, "ok", 0.90),
        ("b", 0, "ok", 0.20), ("b", 1, "error", None), ("b", 2, "ok", 0.20),
        ("c", 0, "error", None), ("c", 1, "error", None),
    ])  # fmt: skip
    out = filter_batch(batch, FilterSpec(bounds=(Bound(r.CLIP_SCORE, max=0.8),), keep_best=2))
    best = "clip_score not among the best 2 samples of its input"
    assert out[r.STATUS].tolist() == [
        "rejected", "ok", "ok", "rejected",  # a3 is over the bound; of the rest, 0.50 and 0.40 stay
        "ok", "error", "ok",  # b has two scored samples: both kept
        "error", "error",
    ]  # fmt: skip
    reasons = [None if r.missing(reason) else reason for reason in out[r.REASON]]
    assert reasons[:4] == [best, None, None, "clip_score 0.9 > max 0.8"]
    tie = filter_batch(batch.iloc[4:7], FilterSpec(keep_best=1))
    assert tie[r.STATUS].tolist() == ["ok", "error", "rejected"]  # equal scores: the lower sample stays


def job(**model_and_clip) -> dict:
    spec = {
        "input": {"kind": "prompts", "uri": "prompts.txt"},
        "model": {"checkpoint": "ckpt"},
        "clip": {"enabled": True, "model": "clip"},
        "output": {"uri": "out"},
    }
    for section, values in model_and_clip.items():
        spec[section] |= values
    return spec


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"samples_per_input": 4}, "clip": {"keep_best": 4}}, "must be below model.samples_per_input"),
        ({"model": {"samples_per_input": 4}, "clip": {"enabled": False, "keep_best": 1}}, "needs clip.enabled"),
        ({"model": {"mode": "joint", "samples_per_input": 2}, "input": {"kind": "count", "count": 3, "uri": None}},
         "raise input.count instead"),
        ({"model": {"samples_per_input": 0}}, "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_sample_settings_that_mean_nothing_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate(job(**overrides))


def test_samples_change_the_output_fingerprint() -> None:
    one = PipelineConfig.model_validate(job())
    four = PipelineConfig.model_validate(job(model={"samples_per_input": 4}, clip={"keep_best": 1}))
    assert one.output_fingerprint() != four.output_fingerprint()


SHAPES_CLIP = Path(__file__).resolve().parents[2] / "models" / "unidiffuser-shapes" / "clip"


def test_clip_text_of_samples_of_one_prompt_is_encoded_once() -> None:
    config = PipelineConfig.model_validate(job(clip={"model": str(SHAPES_CLIP), "batch_size": 2}))
    stage = ClipScoreStage(config)
    texts = ["a red circle", "a red circle", "a blue square on white", "a red circle", ""]
    batch = pd.DataFrame(
        {
            r.STATUS: [r.Status.OK.value] * 4 + [r.Status.ERROR.value],
            r.REASON: [None] * 4 + ["input: empty prompt"],
            r.TEXT: texts,
            r.PROMPT: texts,
            r.OUT_PIXELS: None,
        }
    )
    rows_seen: list[int] = []
    hook = stage.clip.model.text_model.register_forward_hook(
        lambda module, args, kwargs, output: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        out = stage(batch)
    finally:
        hook.remove()
    assert rows_seen == [2]  # two distinct texts, one chunk of clip.batch_size 2
    embeddings = out[r.TEXT_EMBEDDING].tolist()
    assert embeddings[0] == embeddings[1] == embeddings[3] != embeddings[2]
    assert embeddings[4] is None  # an errored record is not scored
    alone = stage(batch.iloc[[2]].reset_index(drop=True))[r.TEXT_EMBEDDING].iloc[0]
    assert np.allclose(alone, embeddings[2], atol=1e-6)
