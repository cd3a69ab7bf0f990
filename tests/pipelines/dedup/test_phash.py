"""pHash: the same picture re-encoded, resized or shifted hashes close; other pictures hash far apart."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipelines.dedup.phash import hamming, hamming_many, phash, phash_ints
from shapes.world import ShapesWorld


def encode(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    """Distinct scenes of the shapes world at 128 px."""
    world = ShapesWorld(seed=3, resolution=128)
    return [world.sample(i, "val").image for i in range(12)]


def test_hash_is_imagehash_phash_as_16_hex_chars(scenes: list[np.ndarray]) -> None:
    value = phash(scenes[0])
    assert len(value) == 16 and int(value, 16) >= 0
    assert value == str(imagehash.phash(Image.fromarray(scenes[0]), hash_size=8))
    assert phash(encode(scenes[0], "PNG")) == value  # lossless bytes: the same pixels, the same hash


def test_the_same_picture_altered_hashes_close(scenes: list[np.ndarray]) -> None:
    image = scenes[0]
    original = phash(image)
    jpeg = phash(encode(image, "JPEG", quality=70))
    resized = phash(Image.fromarray(image).resize((96, 96), Image.Resampling.BICUBIC))
    shifted = phash(np.roll(image, 1, axis=1))
    for altered in (jpeg, resized, shifted):
        assert hamming(original, altered) <= 6


def test_different_scenes_hash_far_apart(scenes: list[np.ndarray]) -> None:
    hashes = [phash(s) for s in scenes]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :] if a != b]
    assert len(distances) >= 60
    assert np.median(distances) >= 16


def test_exif_orientation_is_applied_before_hashing(scenes: list[np.ndarray]) -> None:
    image = Image.fromarray(scenes[1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored = encode(image.rotate(90, expand=True), "PNG", exif=exif.tobytes())
    assert phash(stored) == phash(image)


def test_hamming() -> None:
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    a = phash_ints(["0000000000000000", "00000000000000ff"])
    b = phash_ints(["ffffffffffffffff", "00000000000000f0"])
    assert hamming_many(a, b).tolist() == [64, 4]


@pytest.mark.parametrize("bad", ["fff", "g000000000000000", "0" * 17])
def test_bad_hash_strings_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="16 hex characters"):
        hamming(bad, "0" * 16)


def test_bad_images_are_named() -> None:
    with pytest.raises(ValueError, match="cannot decode image bytes"):
        phash(b"not an image")
    with pytest.raises(ValueError, match="uint8"):
        phash(np.zeros((8, 8, 3), dtype=np.float32))
