"""The invisible watermark (imwatermark): embed and detect, no false positives on unmarked images, the
package's real limits as clear errors, and the channel order Stable Diffusion's scripts use."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from imwatermark import WatermarkDecoder
from PIL import Image

from pipelines.provenance.watermark import (
    DETECTION_THRESHOLD,
    METHODS,
    WatermarkError,
    detect_watermark,
    embed_watermark,
    is_watermarked,
    watermark_match,
    watermark_payload,
)
from shapes.photos import photo_like
from shapes.world import ShapesWorld

PAYLOAD = watermark_payload("demo-prompts@fingerprint-0f3a")


def _upscaled_world_images(count: int, side: int = 256) -> list[np.ndarray]:
    world = ShapesWorld(seed=0)
    return [
        np.asarray(
            Image.fromarray(world.sample(i, "val").image).resize((side, side), Image.Resampling.BICUBIC)
        )
        for i in range(count)
    ]


def test_payload_is_a_prefix_of_sha256() -> None:
    assert watermark_payload("demo-prompts@fingerprint-0f3a") == PAYLOAD
    assert len(PAYLOAD) == 6 and watermark_payload("x", 4) == bytes.fromhex("2d711642")
    assert watermark_payload("another job") != PAYLOAD
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        watermark_payload("x", 0)


@pytest.mark.parametrize("method", METHODS)
def test_embed_then_detect_on_world_images(method: str) -> None:
    for pixels in _upscaled_world_images(3):
        marked = embed_watermark(pixels, PAYLOAD, method)  # type: ignore[arg-type]
        assert marked.shape == pixels.shape and marked.dtype == np.uint8
        assert not np.array_equal(marked, pixels)
        assert detect_watermark(marked, 48, method) == PAYLOAD  # type: ignore[arg-type]
        assert watermark_match(marked, PAYLOAD, method) == 1.0  # type: ignore[arg-type]
        assert is_watermarked(marked, PAYLOAD, method)  # type: ignore[arg-type]
        assert not is_watermarked(pixels, PAYLOAD, method)  # type: ignore[arg-type]


def test_default_method_marks_photo_like_images_invisibly() -> None:
    for seed in range(3):
        pixels = photo_like(320, 448, seed)
        marked = embed_watermark(pixels, PAYLOAD)
        assert detect_watermark(marked, 48) == PAYLOAD
        psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - pixels) ** 2))
        assert psnr > 33, psnr


def test_dwtdct_loses_bits_on_textured_images() -> None:
    """The package's dwtDct (no DCT taken) cannot keep its own bits on texture: the module says so."""
    failures = 0
    for seed in range(3):
        try:
            embed_watermark(photo_like(256, 256, seed), PAYLOAD, "dwtDct")
        except WatermarkError as error:
            assert "bits read back (it loses bits on texture)" in str(error)
            failures += 1
    assert failures >= 1


def test_default_method_survives_jpeg_at_quality_90(pil_encode: Callable[..., bytes]) -> None:
    marked = embed_watermark(photo_like(256, 320, 4), PAYLOAD)
    with Image.open(io.BytesIO(pil_encode(marked, "JPEG", quality=90))) as image:
        decoded = np.asarray(image.convert("RGB"))
    assert is_watermarked(decoded, PAYLOAD)


def test_no_false_positives_on_unmarked_or_other_payload_images() -> None:
    other = watermark_payload("someone else's job")
    images = _upscaled_world_images(6) + [photo_like(256, 256, seed) for seed in range(10, 16)]
    for pixels in images:
        assert watermark_match(pixels, PAYLOAD) < DETECTION_THRESHOLD
        assert not is_watermarked(embed_watermark(pixels, other), PAYLOAD)


def test_rgb_arrays_are_flipped_to_opencv_bgr_as_stable_diffusion_does() -> None:
    pixels = photo_like(256, 256, 7)
    marked = embed_watermark(pixels, PAYLOAD)
    # Stable Diffusion's scripts: cv2.cvtColor(np.array(pil_image), cv2.COLOR_RGB2BGR), then decode
    bgr = cv2.cvtColor(marked, cv2.COLOR_RGB2BGR)
    assert bytes(WatermarkDecoder("bytes", 48).decode(bgr, "dwtDctSvd")) == PAYLOAD
    assert bytes(WatermarkDecoder("bytes", 48).decode(np.ascontiguousarray(marked), "dwtDctSvd")) != PAYLOAD


def test_images_it_cannot_mark_are_clear_errors() -> None:
    world_64 = ShapesWorld(seed=0).sample(0, "val").image  # the demo model's size
    with pytest.raises(WatermarkError, match=r"64x64 is too small .* at least 65536 pixels \(256x256\)"):
        embed_watermark(world_64, PAYLOAD)
    with pytest.raises(WatermarkError, match="too small"):
        detect_watermark(world_64, 48)
    with pytest.raises(WatermarkError, match="fewer than the 48 payload bits"):
        embed_watermark(np.full((9400, 7, 3), 128, np.uint8), PAYLOAD)  # enough pixels, no 8x8 block
    with pytest.raises(WatermarkError, match="uint8 HxWx3"):
        embed_watermark(np.zeros((256, 256), np.uint8), PAYLOAD)
    with pytest.raises(WatermarkError, match="uint8 HxWx3"):
        embed_watermark(np.zeros((256, 256, 3), np.float32), PAYLOAD)
    with pytest.raises(ValueError, match="unknown watermark method 'rivaGan'"):
        embed_watermark(np.zeros((256, 256, 3), np.uint8), PAYLOAD, "rivaGan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 8"):
        detect_watermark(np.zeros((256, 256, 3), np.uint8), 47)


def test_saturated_images_that_lose_the_mark_are_refused() -> None:
    white = np.full((256, 256, 3), 255, np.uint8)
    white[64:192, 64:192] = 128
    with pytest.raises(
        WatermarkError, match=r"does not keep the dwtDctSvd watermark: \d+ of 48 bits read back \(saturated"
    ):
        embed_watermark(white, PAYLOAD)
