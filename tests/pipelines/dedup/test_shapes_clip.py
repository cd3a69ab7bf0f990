"""The dedup chain on real embeddings: the demo model's CLIP, images of the shapes world and copies of them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.dedup import ArrayVectors, SearchConfig, find_pairs, group_removals
from pipelines.dedup.defaults import IMAGE_THRESHOLD, MAX_HAMMING
from pipelines.dedup.phash import phash, phash_ints
from shapes.world import Obj, Scene, render
from unidiffuser.clip_embedder import ClipEmbedder

CLIP = Path(__file__).resolve().parents[3] / "models" / "unidiffuser-shapes" / "clip"


@pytest.fixture(scope="module")
def clip() -> ClipEmbedder:
    """The pipeline's own CLIP embedder (as its score stage embeds) on the demo model's CLIP."""
    return ClipEmbedder(CLIP)


def jpeg(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_copies_of_a_picture_are_removed_and_other_pictures_kept(clip) -> None:
    scenes = [
        Scene(background, (Obj(shape, colour, "large", "center", 32.0, 32.0, 26.0),))
        for background, shape, colour in [
            ("grey", "circle", "red"),
            ("black", "square", "green"),
            ("white", "triangle", "blue"),
            ("grey", "diamond", "yellow"),
            ("black", "circle", "purple"),
            ("white", "square", "cyan"),
        ]
    ]
    originals = [render(scene) for scene in scenes]
    copies = [
        jpeg(originals[0]),
        jpeg(originals[2]),
        np.asarray(Image.fromarray(originals[4]).resize((48, 48))),
    ]
    images = originals + copies
    keys = [f"scene-{i}" for i in range(6)] + ["copy-of-0", "copy-of-2", "copy-of-4"]
    vectors = ArrayVectors(clip.images(images, batch_size=len(images)))
    hashes = phash_ints([phash(i) for i in images])
    pairs = find_pairs(
        vectors, SearchConfig(threshold=IMAGE_THRESHOLD, max_hamming=MAX_HAMMING), phashes=hashes
    )
    scores = [1.0] * 6 + [0.5] * 3  # the originals score higher: they are the ones kept
    removals = group_removals(keys, scores, pairs, vectors)
    assert {r.key: r.kept_key for r in removals} == {
        "copy-of-0": "scene-0",
        "copy-of-2": "scene-2",
        "copy-of-4": "scene-4",
    }
    assert all(r.similarity >= IMAGE_THRESHOLD for r in removals)
