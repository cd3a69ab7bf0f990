"""The pixel-level evaluator: shapes, colours, sizes, positions and backgrounds read from pixels alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from shapes.detector import classify_shape, components, detect, matches
from shapes.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    render,
)


def _scene(shape, colour, size="large", position="center", background="grey", jitter=(0, 0)) -> Scene:
    x, y = POSITIONS[position]
    return Scene(background, (Obj(shape, colour, size, position, x + jitter[0], y + jitter[1], SIZES[size]),))


@pytest.mark.parametrize("shape, colour, background", list(itertools.product(SHAPES, COLOURS, BACKGROUNDS)))
def test_every_shape_colour_and_background(shape, colour, background):
    for size, position in (("small", "top left"), ("large", "center"), ("small", "bottom right")):
        found = detect(render(_scene(shape, colour, size, position, background)))
        assert found.background == background
        assert [(o.shape, o.colour, o.size, o.position) for o in found.objects] == [
            (shape, colour, size, position)
        ]


def test_two_objects_and_an_empty_image():
    scene = Scene(
        "black",
        (Obj("triangle", "yellow", "large", "top right", 48, 16, 26),
         Obj("circle", "cyan", "small", "bottom left", 16, 48, 14)),
    )  # fmt: skip
    found = detect(render(scene))
    assert found.pairs == [("circle", "cyan"), ("triangle", "yellow")]
    assert {o.position for o in found.objects} == {"top right", "bottom left"}
    empty = detect(render(Scene("white", ())))
    assert empty.background == "white" and empty.objects == []


def test_robust_to_noise_and_blur_like_a_decoder_output():
    rng = np.random.default_rng(0)
    for shape, colour in itertools.product(SHAPES, ("red", "blue", "purple")):
        image = render(_scene(shape, colour, "large", "center", "grey", jitter=(1, -1)))
        blurred = Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR)
        blurred = np.asarray(blurred.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
        noisy = np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8)
        found = detect(noisy)
        assert found.pairs == [(shape, colour)], (shape, colour, found)


def test_specks_are_ignored_and_off_palette_colours_named_by_the_nearest():
    image = np.full((64, 64, 3), 128, np.uint8)
    image[5:7, 5:7] = (255, 0, 0)  # 4 pixels: noise
    image[20:44, 20:44] = (200, 60, 50)  # a reddish square
    found = detect(image)
    assert [(o.shape, o.colour, o.size) for o in found.objects] == [("square", "red", "large")]


def test_shape_geometry_and_components():
    ys, xs = np.mgrid[0:21, 0:21]
    assert classify_shape(np.ones((10, 10), bool))[0] == "square"
    assert classify_shape(np.abs(xs - 10) <= ys / 2)[0] == "triangle"  # apex up
    assert classify_shape(np.abs(xs - 10) + np.abs(ys - 10) <= 10)[0] == "diamond"
    assert classify_shape((xs - 10) ** 2 + (ys - 10) ** 2 <= 100)[0] == "circle"
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True
    mask[5:8, 5:8] = True
    mask[2, 2] = True  # diagonal neighbour: 8-connected to the first block
    assert sorted(len(c) for c in components(mask)) == [5, 9]


def test_matches_is_a_multiset_comparison():
    assert matches([("circle", "red"), ("square", "blue")], [("square", "blue"), ("circle", "red")])
    assert not matches([("circle", "red")], [("circle", "red"), ("circle", "red")])
    assert not matches([("circle", None)], [("circle", "red")])
