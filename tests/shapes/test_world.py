"""The shapes world: deterministic, held-out pairs kept out of training, ground truth consistent with pixels."""

from __future__ import annotations

import numpy as np
import pytest

from shapes.detector import detect
from shapes.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesWorld,
    parse_caption,
    vocabulary_corpus,
)


def test_samples_are_deterministic_per_seed_split_and_index():
    a, b = ShapesWorld(seed=3), ShapesWorld(seed=3)
    for split in ("train", "val", "heldout"):
        for i in (0, 7, 1234):
            x, y = a.sample(i, split), b.sample(i, split)
            assert x.scene == y.scene and x.caption == y.caption
            assert np.array_equal(x.image, y.image)
    assert a.sample(0).image.shape == (64, 64, 3) and a.sample(0).image.dtype == np.uint8
    other = ShapesWorld(seed=4)
    assert [other.sample(i).caption for i in range(20)] != [a.sample(i).caption for i in range(20)]
    assert [a.sample(i, "val").caption for i in range(20)] != [
        a.sample(i, "train").caption for i in range(20)
    ]


def test_held_out_pairs_never_appear_in_training_and_always_in_heldout():
    world = ShapesWorld(seed=0)
    seen = set()
    for i in range(3000):
        for split in ("train", "val"):
            pairs = {o.pair for o in world.scene(i, split).objects}
            assert not pairs & HELD_OUT_PAIRS, (split, i, pairs)
            seen |= pairs
        assert {o.pair for o in world.scene(i, "heldout").objects} & HELD_OUT_PAIRS
    # everything else is covered: every other shape-colour pair, background, size and position
    assert seen == {(s, c) for s in SHAPES for c in COLOURS} - HELD_OUT_PAIRS
    # the autoencoder's split (images only) covers every pair, the held-out ones included
    codec = {o.pair for i in range(3000) for o in world.scene(i, "codec").objects}
    assert codec == {(s, c) for s in SHAPES for c in COLOURS}
    scenes = [world.scene(i) for i in range(3000)]
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {o.size for s in scenes for o in s.objects} == set(SIZES)
    assert {o.position for s in scenes for o in s.objects} == set(POSITIONS)
    assert {len(s.objects) for s in scenes} == {1, 2}


def test_captions_name_the_ground_truth_and_vary():
    world = ShapesWorld(seed=0)
    captions = set()
    for i in range(400):
        sample = world.sample(i, "heldout" if i % 2 else "train")
        parsed = parse_caption(sample.caption)
        assert parsed.background == sample.scene.background
        got = sorted((o.shape, o.colour, o.size, o.position) for o in parsed.objects)
        assert got == sorted((o.shape, o.colour, o.size, o.position) for o in sample.scene.objects)
        captions.add(sample.caption)
    assert len(captions) > 350  # paraphrases, not one template
    scene = world.scene(5)
    assert len(world.all_captions(scene)) >= 20
    assert world.caption(scene, 0) != world.caption(scene, 1) or world.caption(scene, 2) != world.caption(
        scene, 0
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("grey background with a red circle in the top-left corner", [("circle", "red", None, "top left")]),
        ("a small red circle at the top left on a grey background", [("circle", "red", "small", "top left")]),
        ("a big blue square in the lower right and a little cyan diamond in the middle on white",
         [("square", "blue", "large", "bottom right"), ("diamond", "cyan", "small", "center")]),
        ("a purple triangle", [("triangle", "purple", None, None)]),
        ("nothing here", []),
        ("a circle and a red circle", [("circle", None, None, None), ("circle", "red", None, None)]),
    ],
)  # fmt: skip
def test_parse_caption(text, expected):
    parsed = parse_caption(text)
    assert [(o.shape, o.colour, o.size, o.position) for o in parsed.objects] == expected
    assert len(parsed.pairs) == len(expected)


def test_ground_truth_matches_the_pixels():
    world = ShapesWorld(seed=1)
    for split in ("train", "heldout"):
        for i in range(150):
            sample = world.sample(i, split)
            found = detect(sample.image)
            assert found.background == sample.scene.background
            assert sorted((o.shape, o.colour, o.size, o.position) for o in found.objects) == sorted(
                (o.shape, o.colour, o.size, o.position) for o in sample.scene.objects
            ), (split, i, sample.caption)


def test_vocabulary_corpus_covers_every_word_the_world_writes():
    words = {w for c in vocabulary_corpus() for w in c.replace(",", " ").replace("-", " ").split()}
    world = ShapesWorld(seed=2)
    for i in range(300):
        caption = world.sample(i, "heldout" if i % 3 == 0 else "train").caption
        assert set(caption.replace(",", " ").replace("-", " ").split()) <= words
