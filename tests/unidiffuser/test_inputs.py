"""Every kind of bad or odd input, through ``prepare_image``/``check_prompt`` and through the engine.

Bad records must come back as per-record errors with a clear reason; recoverable oddities (colour modes,
EXIF orientation, small images, long prompts) must be fixed and flagged. Through the engine an input must
give exactly what its prepared pixels give (the engine uses the same preparation).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from unidiffuser import InputError, UniDiffuserEngine, prepare_image
from unidiffuser.inputs import check_prompt

RES = 64


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _rgb(seed: int = 0, size: tuple[int, int] = (RES, RES)) -> np.ndarray:
    """A random RGB uint8 array of ``size`` = (height, width)."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG (valid CRCs) whose header claims ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _engine_result(engine: UniDiffuserEngine, item, seed: int = 1):
    (result,) = engine.i2t2i([item], seeds=[seed])
    return result


def _assert_same_as_prepared(engine: UniDiffuserEngine, item, flags: list[str]) -> None:
    """Through the engine: the record runs, carries ``flags``, and equals the run on its prepared pixels."""
    prepared = prepare_image(item, engine.resolution)
    result = _engine_result(engine, item)
    assert result.ok, result.error
    assert result.flags == flags
    assert result.image.shape == (RES, RES, 3) and result.image.dtype == np.uint8
    direct = _engine_result(engine, prepared.pixels)
    assert direct.flags == []  # an RGB array at the model size needs nothing done
    assert np.array_equal(result.image, direct.image)


# ------------------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", " ", "   \t\n  ", "\u3000"])
def test_empty_prompts(prompt: str, engine: UniDiffuserEngine):
    with pytest.raises(InputError, match="^empty prompt$"):
        check_prompt(prompt)
    for mode in ("t2i", "t2i2t"):
        (result,) = getattr(engine, mode)([prompt], seeds=[0])
        assert not result.ok and result.error == "empty prompt"
        assert result.image is None and result.text is None
    (result,) = engine.chain([prompt], seeds=[0], hops=2)
    assert result.error == "empty prompt" and result.hops is None


@pytest.mark.parametrize("prompt", [None, 5, 3.5, b"a cat", ["a cat"], {"text": "a cat"}])
def test_non_string_prompts(prompt, engine: UniDiffuserEngine):
    with pytest.raises(InputError, match="prompt must be a string") as info:
        check_prompt(prompt)
    assert type(prompt).__name__ in str(info.value)
    for mode in ("t2i", "t2i2t"):
        (result,) = getattr(engine, mode)([prompt], seeds=[0])
        assert not result.ok and "prompt must be a string" in result.error


def test_check_prompt_keeps_valid_prompts_unchanged():
    for prompt in ("a cat", "  padded  ", "ünïcödé ✓", "x"):
        assert check_prompt(prompt) == prompt


def test_long_prompts_are_truncated_and_flagged(engine: UniDiffuserEngine):
    # the tiny CLIP tokenizer is character level: one token per character of a word, plus BOS and EOS
    tokenizer = engine.components.clip_tokenizer
    assert len(tokenizer("a" * 75).input_ids) == 77
    fits, over = "a" * 75, "a" * 76
    results = engine.t2i([fits, over], seeds=[1, 1])
    assert [r.flags for r in results] == [[], ["prompt_truncated"]]
    for r in results:
        assert r.ok
        assert r.image.shape == (RES, RES, 3) and r.image.dtype == np.uint8

    # far over the limit: only the first 77 tokens count, so the tails do not matter
    head = "a photo of " + "a very " * 20
    long_a, long_b = head + "red circle " * 10, head + "blue square " * 10
    a, b = engine.t2i([long_a, long_b], seeds=[3, 3])
    assert a.flags == b.flags == ["prompt_truncated"]
    assert np.array_equal(a.image, b.image)
    # ... while a prompt that fits does matter
    short = engine.t2i(["a photo of a red circle"], seeds=[3])[0]
    assert short.flags == [] and not np.array_equal(short.image, a.image)
    (caption,) = engine.t2i2t([long_a], seeds=[3])
    assert caption.ok and caption.flags == ["prompt_truncated"] and caption.text


# ------------------------------------------------------------------------------------------------------------
# colour modes
# ------------------------------------------------------------------------------------------------------------
def _p_with_transparency() -> Image.Image:
    image = Image.new("P", (RES, RES), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, RES, RES // 2))  # top half: palette index 1 (green), declared transparent
    image.info["transparency"] = 1
    return image


def _mode_cases() -> dict[str, tuple[Image.Image, tuple[int, int, int], tuple[int, int, int]]]:
    """mode -> (image, expected RGB at the top-left, expected RGB at the bottom-right)."""
    half = RES // 2
    l_img = Image.new("L", (RES, RES), 100)
    l_img.paste(200, (0, half, RES, RES))
    la = Image.new("LA", (RES, RES), (0, 0))  # transparent black -> white background
    la.paste((0, 255), (0, half, RES, RES))  # opaque black
    rgba = Image.new("RGBA", (RES, RES), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, half, RES, RES))
    cmyk = Image.new("CMYK", (RES, RES), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((255, 0, 0, 0), (0, half, RES, RES))  # full cyan
    i16 = Image.fromarray(np.full((RES, RES), 65535, dtype=np.uint16))
    i16.paste(0, (0, half, RES, RES))
    return {
        "L": (l_img, (100, 100, 100), (200, 200, 200)),
        "LA": (la, (255, 255, 255), (0, 0, 0)),
        "P": (_p_with_transparency(), (255, 255, 255), (255, 0, 0)),
        "RGBA": (rgba, (255, 255, 255), (0, 0, 255)),
        "CMYK": (cmyk, (255, 255, 255), (0, 255, 255)),
        "I;16": (i16, (255, 255, 255), (0, 0, 0)),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["pil", "encoded"])
def test_colour_modes_are_converted(mode: str, as_bytes: bool, engine: UniDiffuserEngine):
    image, top_left, bottom_right = _mode_cases()[mode]
    assert image.mode == mode
    item: object = image
    if as_bytes:
        item = _encode(image, "TIFF" if mode == "CMYK" else "PNG")
        assert Image.open(io.BytesIO(item)).mode == mode  # the encoding keeps the mode
    prepared = prepare_image(item, RES)
    assert prepared.flags == [f"converted_from_{mode}"]
    assert prepared.pixels.shape == (RES, RES, 3) and prepared.pixels.dtype == np.uint8
    assert tuple(int(v) for v in prepared.pixels[2, 2]) == top_left
    assert tuple(int(v) for v in prepared.pixels[-3, -3]) == bottom_right
    _assert_same_as_prepared(engine, item, [f"converted_from_{mode}"])


def test_semi_transparent_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (RES, RES), (255, 0, 0, 128))
    pixel = prepare_image(rgba, RES).pixels[10, 10].astype(int)
    assert pixel[0] == 255 and abs(pixel[1] - 127) <= 1 and abs(pixel[2] - 127) <= 1


def test_rgb_image_needs_no_flags(engine: UniDiffuserEngine):
    array = _rgb(0)
    for item in (
        array,
        Image.fromarray(array),
        _encode(Image.fromarray(array)),
        bytearray(_encode(Image.fromarray(array))),
    ):
        prepared = prepare_image(item, RES)
        assert prepared.flags == []
        assert np.array_equal(prepared.pixels, array)
    prepared = prepare_image(memoryview(_encode(Image.fromarray(array))), RES)
    assert np.array_equal(prepared.pixels, array)
    _assert_same_as_prepared(engine, _encode(Image.fromarray(array)), [])


def test_uint8_arrays_of_each_layout(engine: UniDiffuserEngine):
    gray = np.random.default_rng(1).integers(0, 256, (RES, RES), dtype=np.uint8)
    prepared = prepare_image(gray, RES)
    assert prepared.flags == ["converted_from_L"]
    assert np.array_equal(prepared.pixels, np.repeat(gray[..., None], 3, axis=2))
    assert prepare_image(gray[..., None], RES).flags == ["converted_from_L"]
    assert np.array_equal(prepare_image(gray[..., None], RES).pixels, prepared.pixels)

    rgba = np.concatenate([_rgb(2), np.full((RES, RES, 1), 255, np.uint8)], axis=2)
    rgba[: RES // 2, :, 3] = 0  # top half fully transparent
    prepared = prepare_image(rgba, RES)
    assert prepared.flags == ["converted_from_RGBA"]
    assert (prepared.pixels[: RES // 2] == 255).all()
    assert np.array_equal(prepared.pixels[RES // 2 :], rgba[RES // 2 :, :, :3])
    _assert_same_as_prepared(engine, gray, ["converted_from_L"])
    _assert_same_as_prepared(engine, rgba, ["converted_from_RGBA"])


@pytest.mark.parametrize("mode", ["1", "I", "F", "PA", "RGBX", "YCbCr", "I;16B"])
def test_other_pil_modes_become_rgb(mode: str):
    prepared = prepare_image(Image.new(mode, (RES, RES)), RES)
    assert prepared.flags == [f"converted_from_{mode}"]
    assert prepared.pixels.shape == (RES, RES, 3) and prepared.pixels.dtype == np.uint8


def test_unconvertible_mode_does_not_spoil_the_batch(engine: UniDiffuserEngine):
    premultiplied = Image.new("La", (RES, RES))
    good = _rgb(0)
    results = engine.i2t2i([good, premultiplied], seeds=[1, 2])
    assert results[0].ok
    assert np.array_equal(results[0].image, _engine_result(engine, good).image)
    assert results[1].ok or results[1].error


# ------------------------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------------------------
def _exif_jpeg(orientation: int) -> bytes:
    """A 128x64 (W x H) JPEG: left half red, right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", (2 * RES, RES), (255, 0, 0))
    image.paste((0, 0, 255), (RES, 0, 2 * RES, RES))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", exif=exif, quality=95)


def _is_red(pixels: np.ndarray) -> bool:
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    return r > 200 and g < 60 and b < 60


def _is_blue(pixels: np.ndarray) -> bool:
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    return b > 200 and r < 60 and g < 60


def test_exif_orientation_is_applied(engine: UniDiffuserEngine):
    """Orientation 6 = rotate 90 degrees clockwise to display: the left half ends up on top."""
    data = _exif_jpeg(6)
    assert Image.open(io.BytesIO(data)).size == (2 * RES, RES)  # stored landscape
    pixels = prepare_image(data, RES).pixels
    assert pixels.shape == (RES, RES, 3)
    # displayed 64 wide x 128 high; the centre crop keeps rows 32..96, so red on top, blue below
    assert _is_red(pixels[4 : RES // 2 - 4])
    assert _is_blue(pixels[RES // 2 + 4 : -4])

    # counter-check: without the tag the crop is red on the left, blue on the right
    plain = prepare_image(_exif_jpeg(1), RES).pixels
    assert _is_red(plain[:, 4 : RES // 2 - 4]) and _is_blue(plain[:, RES // 2 + 4 : -4])
    # orientation 8 (90 degrees counter-clockwise) puts the left half at the bottom
    ccw = prepare_image(_exif_jpeg(8), RES).pixels
    assert _is_blue(ccw[4 : RES // 2 - 4]) and _is_red(ccw[RES // 2 + 4 : -4])

    _assert_same_as_prepared(engine, data, [])
    assert not np.array_equal(_engine_result(engine, data).image, _engine_result(engine, _exif_jpeg(1)).image)


# ------------------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (16, 16), (20, 100), (63, 200)])
def test_small_images_are_upscaled_and_flagged(size: tuple[int, int], engine: UniDiffuserEngine):
    height, width = size
    array = _rgb(3, size)
    prepared = prepare_image(array, RES)
    assert prepared.pixels.shape == (RES, RES, 3)
    assert prepared.flags == [f"upscaled_from_{width}x{height}"]
    _assert_same_as_prepared(engine, array, [f"upscaled_from_{width}x{height}"])


def test_large_and_non_square_images_are_resized_and_cropped():
    array = _rgb(4, (300, 200))  # H x W
    prepared = prepare_image(array, RES)
    assert prepared.pixels.shape == (RES, RES, 3) and prepared.flags == []
    expected = np.asarray(
        Image.fromarray(array).resize((RES, 96), Image.Resampling.BICUBIC).crop((0, 16, RES, 16 + RES))
    )
    assert np.array_equal(prepared.pixels, expected)


@pytest.mark.parametrize("size", [(15, 15), (8, 300), (300, 1)])
def test_images_below_min_side_are_rejected(size: tuple[int, int], engine: UniDiffuserEngine):
    array = _rgb(5, size)
    with pytest.raises(InputError, match="image too small"):
        prepare_image(array, RES)
    result = _engine_result(engine, array)
    assert not result.ok and "image too small" in result.error and result.image is None


def test_min_image_side_config(tiny_checkpoint: Path):
    engine = UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=2, min_image_side=4)
    result = _engine_result(engine, _rgb(6, (8, 8)))
    assert result.ok and result.flags == ["upscaled_from_8x8"]
    assert not _engine_result(engine, _rgb(6, (3, 8))).ok
    with pytest.raises(InputError, match="image too small"):
        prepare_image(_rgb(6, (8, 8)), RES)  # the default minimum is 16


# ------------------------------------------------------------------------------------------------------------
# decompression bombs
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if any pixel data gets decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000), (1, 2**31 - 1)])
def test_decompression_bomb_is_refused_without_decoding(width: int, height: int, no_decoding, engine):
    data = png_claiming(width, height)
    assert len(data) < 200
    with pytest.raises(InputError, match="image too large"):
        prepare_image(data, RES)  # refused from the header: ``no_decoding`` fails any pixel decode
    result = _engine_result(engine, data)
    assert not result.ok and "image too large" in result.error


def test_bomb_header_is_valid_png():
    """The crafted file really is a PNG that PIL accepts up to its pixel-count limit."""
    image = Image.open(io.BytesIO(png_claiming(3000, 2000)))
    assert image.format == "PNG" and image.size == (3000, 2000)


def test_max_image_pixels_config(tiny_checkpoint: Path, no_decoding):
    with pytest.raises(InputError, match="image too large: 40x40 exceeds the limit of 1000 pixels"):
        prepare_image(_rgb(7, (40, 40)), RES, max_pixels=1000)
    with pytest.raises(InputError, match="image too large"):
        prepare_image(png_claiming(64, 64), RES, max_pixels=1000)


def test_max_image_pixels_config_through_engine(tiny_checkpoint: Path):
    engine = UniDiffuserEngine.from_pretrained(tiny_checkpoint, steps=2, max_image_pixels=1000)
    small_ok = _rgb(8, (30, 30))  # 900 pixels: under the limit, upscaled
    too_big = _rgb(8, (RES, RES))  # 4096 pixels
    ok, bad, bad_bytes = engine.i2t2i([small_ok, too_big, _encode(Image.fromarray(too_big))], seeds=[1, 2, 3])
    assert ok.ok and ok.flags == ["upscaled_from_30x30"]
    for r in (bad, bad_bytes):
        assert not r.ok and "image too large" in r.error and "1000" in r.error


# ------------------------------------------------------------------------------------------------------------
# undecodable data and wrong types
# ------------------------------------------------------------------------------------------------------------
def _truncated_jpeg() -> bytes:
    data = _encode(Image.fromarray(_rgb(9, (RES, RES))), "JPEG", quality=95)
    cut = data[: len(data) // 2]
    Image.open(io.BytesIO(cut))  # the header alone is fine: the damage only shows when decoding
    return cut


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not an image at all", "undecodable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable image"),
        (b"", "empty image bytes"),
        (bytearray(), "empty image bytes"),
        (_truncated_jpeg(), "undecodable image"),
    ],
    ids=["garbage", "broken-png", "empty", "empty-bytearray", "truncated-jpeg"],
)
def test_undecodable_bytes(data: bytes, reason: str, engine: UniDiffuserEngine):
    with pytest.raises(InputError, match=reason):
        prepare_image(data, RES)
    result = _engine_result(engine, data)
    assert not result.ok and reason in result.error
    (caption,) = engine.i2t([data], seeds=[0])
    assert not caption.ok and reason in caption.error


@pytest.mark.parametrize(
    "data, reason",
    [
        (5, "image must be bytes, a PIL image or a uint8 array, got int"),
        (None, "got NoneType"),
        ({"image": b"..."}, "got dict"),
        ("a/path/to/image.png", "got str"),
        (np.zeros((RES, RES, 3), np.float32), "image array must be uint8"),
        (np.zeros((RES, RES, 3), np.uint16), "image array must be uint8"),
        (np.zeros((RES, RES, 2), np.uint8), "image array must be uint8"),
        (np.zeros((2, RES, RES, 3), np.uint8), "image array must be uint8"),
        (np.zeros((RES,), np.uint8), "image array must be uint8"),
    ],
    ids=["int", "none", "dict", "str", "float-array", "uint16-array", "2-channel", "4d", "1d"],
)
def test_wrong_types(data, reason: str, engine: UniDiffuserEngine):
    with pytest.raises(InputError) as info:
        prepare_image(data, RES)
    assert reason in str(info.value)
    result = _engine_result(engine, data)
    assert not result.ok and reason in result.error


def test_strings_start_a_chain_from_text_not_from_an_image(engine: UniDiffuserEngine):
    """chain() treats a string as a prompt: the same string must not be read as an image path."""
    (result,) = engine.chain(["a/path/to/image.png"], seeds=[1], hops=1)
    assert result.ok and result.hops[0].image is not None


@pytest.mark.parametrize("prompt", ["\u200b", "\x00\x00", "\ufeff \u200d\t", "\u2060\u00a0"])
def test_prompts_of_invisible_characters_are_empty(prompt: str, engine):
    """Zero-width, NUL and other invisible characters alone are as empty as a blank prompt."""
    with pytest.raises(InputError, match="empty prompt"):
        check_prompt(prompt)
    (result,) = engine.t2i([prompt], seeds=[0])
    assert result.error == "empty prompt"
    assert check_prompt("a\u200bcat") == "a\u200bcat"  # visible text with one inside is a prompt
