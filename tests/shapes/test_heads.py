"""The shapes family's two score heads: the property they learn, their training, and the shipped heads."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.heads import HeadSpec, load_head
from pipelines.pixels import to_bytes
from pipelines.stages.score import ClipScoreStage
from shapes.clip import roc_auc
from shapes.heads import HeadsConfig, HeadTrainConfig, composition_score, is_not_safe, spearman, train_heads
from shapes.quality import ClipScorer
from shapes.world import Obj, Scene, ShapesWorld, render

MODEL = Path(__file__).resolve().parents[2] / "models" / "unidiffuser-shapes"
HEADS = MODEL.with_name("unidiffuser-shapes-heads")
# measured on the shipped heads with the fresh scenes below (val 4000-4599: 32 red squares; CPU float32)
MEASURED = {"aesthetic_spearman": 0.881, "not_safe_auc": 0.988}


def test_composition_grows_with_size_and_centring():
    def one(size: str, position: str, side: float, x: float, y: float) -> float:
        return composition_score(render(Scene("grey", (Obj("square", "red", size, position, x, y, side),))))

    empty = composition_score(render(Scene("white", ())))
    small_corner = one("small", "top left", 16, 16, 16)
    large_corner = one("large", "top left", 26, 16, 16)
    small_centre = one("small", "center", 16, 32, 32)
    large_centre = one("large", "center", 26, 32, 32)
    assert empty == 0.0
    assert 0 < small_corner < large_corner < large_centre < 10
    assert small_corner < small_centre < large_centre
    assert composition_score(np.full((64, 64, 3), 30, np.uint8)) == 0.0  # background only
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[1:-1, 1:-1] = 255  # everything but the border
    assert composition_score(frame) > 9.5


def test_not_safe_is_the_red_square():
    assert is_not_safe(Scene("grey", (Obj("square", "red", "small", "center"),)))
    assert not is_not_safe(Scene("grey", (Obj("square", "blue", "small", "center"),)))
    assert is_not_safe(Scene("white", (Obj("circle", "cyan", "large", "top left"),
                                       Obj("square", "red", "small", "bottom right"))))  # fmt: skip


def test_training_is_deterministic(tmp_path: Path):
    quick = HeadTrainConfig(hidden=[8], steps=40, batch_size=64)
    cfg = HeadsConfig(train_samples=256, val_samples=64, aesthetic=quick, not_safe=quick)
    first = train_heads(tmp_path / "a", MODEL / "clip", cfg)
    second = train_heads(tmp_path / "b", MODEL / "clip", cfg)
    for name in ("aesthetic", "not_safe"):
        for file in ("head.json", "model.safetensors", "README.md"):
            assert (tmp_path / "a" / name / file).read_bytes() == (tmp_path / "b" / name / file).read_bytes()
    assert first["val"] == second["val"]
    assert first["parts"]["not_safe"]["positives"] > 0


def test_embeddings_are_those_of_the_score_stage():
    """What the heads were trained on is what the pipeline will give them."""
    world = ShapesWorld(0)
    samples = [world.sample(i, "val") for i in range(40)]
    config = PipelineConfig.model_validate({
        "input": {"kind": "prompts", "uri": "unused.txt"}, "model": {"checkpoint": str(MODEL), "mode": "t2i"},
        "clip": {"model": str(MODEL / "clip"), "batch_size": 16}, "output": {"uri": "unused"},
    })  # fmt: skip
    captions = [s.caption for s in samples]
    batch = pd.DataFrame({
        r.STATUS: [r.Status.OK.value] * len(samples), r.REASON: [None] * len(samples), r.OUT_PIXELS: [to_bytes(s.image) for s in samples],
        r.TEXT: captions, r.PROMPT: captions, r.PIXELS: [None] * len(samples),
    })  # fmt: skip
    stage = ClipScoreStage(config)(batch)
    ours = ClipScorer(MODEL / "clip").image_embeddings([s.image for s in samples], batch_size=16)
    np.testing.assert_array_equal(np.array(stage[r.IMAGE_EMBEDDING].tolist(), np.float32), ours)


@cache
def fresh_scenes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Val scenes the heads never saw: embeddings, composition, red square or not (about 5 % of them)."""
    samples = [ShapesWorld(0).sample(i, "val") for i in range(4000, 4600)]
    embeddings = ClipScorer(MODEL / "clip").image_embeddings([s.image for s in samples], batch_size=200)
    return (embeddings, np.array([composition_score(s.image) for s in samples]),
            np.array([is_not_safe(s.scene) for s in samples]))  # fmt: skip


@pytest.mark.parametrize("name", ["aesthetic", "not_safe"])
def test_shipped_heads_separate_what_they_should(name: str):
    spec = HeadSpec(name=name, kind="mlp", uri=str(HEADS / name))
    assert spec.column == {"aesthetic": "aesthetic", "not_safe": "punsafe"}[name]
    head = load_head(spec)
    assert head.embedding_dim == 32 and len(head.identity) == 16
    embeddings, composition, not_safe = fresh_scenes()
    scores = head.score_embeddings(embeddings)
    if name == "aesthetic":
        assert spearman(scores, composition) >= MEASURED["aesthetic_spearman"] - 0.05
    else:
        assert not_safe.sum() >= 15
        assert roc_auc(scores[not_safe], scores[~not_safe]) >= MEASURED["not_safe_auc"] - 0.03
        assert np.median(scores[not_safe]) > 0.5 > np.median(scores[~not_safe])
