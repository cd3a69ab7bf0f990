"""Per-record input checks and preparation (no model needed: usable in CPU preprocessing stages).

A bad record raises ``InputError`` with a clear reason; the engine turns that into an error result for that
record only. Recoverable oddities (converted colour modes, upscaled small images, truncated prompts) are
reported as flags on the record's result.
"""

from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
DEFAULT_MIN_IMAGE_SIDE = 16


class InputError(ValueError):
    """A record the engine cannot process; the message is the reason reported for that record."""


@dataclass
class PreparedImage:
    """An RGB uint8 image at the model resolution, and what was done to get it there."""

    pixels: np.ndarray  # (H, W, 3) uint8
    flags: list[str] = field(default_factory=list)


def check_prompt(prompt: object) -> str:
    """Return the prompt if it is a string with something visible in it, else raise ``InputError``: a prompt
    made only of whitespace, control characters (NUL, ...) and invisible format characters (zero-width
    spaces and joiners, a BOM) is as empty as a blank one."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    if all(ch.isspace() or unicodedata.category(ch) in _INVISIBLE for ch in prompt):
        raise InputError("empty prompt")
    return prompt


_INVISIBLE = frozenset({"Cc", "Cf"})  # control and format characters (NUL, ZWSP U+200B, ZWJ, BOM, ...)


def decode_image(data: object, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open bytes / PIL image / uint8 array as a PIL image, refusing decompression bombs before decoding."""
    if isinstance(data, Image.Image):
        image = data
    elif isinstance(data, np.ndarray):
        if (
            data.dtype != np.uint8
            or data.ndim not in (2, 3)
            or (data.ndim == 3 and data.shape[2] not in (1, 3, 4))
        ):
            raise InputError(f"image array must be uint8 HxW, HxWx3 or HxWx4, got {data.dtype} {data.shape}")
        image = Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[2] == 1 else data)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise InputError("empty image bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(bytes(data)))
        except Image.DecompressionBombError as exc:
            raise InputError(f"image too large: {exc}") from None
        except Image.UnidentifiedImageError:
            raise InputError("undecodable image: not a recognised image format") from None
        except Exception as exc:
            raise InputError(f"undecodable image: {type(exc).__name__}: {exc}") from None
    else:
        raise InputError(f"image must be bytes, a PIL image or a uint8 array, got {type(data).__name__}")
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(f"image too large: {width}x{height} exceeds the limit of {max_pixels} pixels")
    try:
        image.load()
    except Exception as exc:
        raise InputError(f"undecodable image: {type(exc).__name__}: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert any PIL mode to RGB (alpha composited on white, 16-bit rescaled); returns the flags."""
    flags = []
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the image
        flags.append("exif_unreadable")
    if image.mode == "RGB":
        return image, flags
    flags.append(f"converted_from_{image.mode}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), flags
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        gray = np.clip((array - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), flags
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), flags
    return image.convert("RGB"), flags


def resize_center_crop(image: Image.Image, size: int) -> tuple[Image.Image, list[str]]:
    """Resize the short side to ``size`` (bicubic) and center-crop to ``size`` x ``size``."""
    flags = []
    width, height = image.size
    if min(width, height) < size:
        flags.append(f"upscaled_from_{width}x{height}")
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (new_w, new_h) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return image, flags


def prepare_image(
    data: object,
    resolution: int,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_side: int = DEFAULT_MIN_IMAGE_SIDE,
) -> PreparedImage:
    """Decode, orient, convert to RGB and resize + center-crop one input image for the model."""
    image = decode_image(data, max_pixels=max_pixels)
    if min(image.size) < min_side:
        raise InputError(f"image too small: {image.size[0]}x{image.size[1]} (minimum side {min_side} px)")
    try:
        rgb, flags = to_rgb(image)
        fitted, resize_flags = resize_center_crop(rgb, resolution)
    except (ValueError, OSError) as exc:  # e.g. a colour mode PIL cannot convert
        raise InputError(f"unconvertible image ({image.mode}): {exc}") from None
    return PreparedImage(np.asarray(fitted, dtype=np.uint8).copy(), flags + resize_flags)
