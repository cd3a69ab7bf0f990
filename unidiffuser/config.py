"""Engine configuration: one validated model, every problem reported at once.

``SamplingConfig`` holds what decides a record's output (mode, steps, guidance, dtype, ...); it is the shared
base of ``EngineConfig`` (which adds where and how the engine runs) and of the pipelines' job spec, so each
option is declared once, with its bounds and meaning.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import torch


class ModeInput(StrEnum):
    """What one record of a mode is made from."""

    TEXT = "text"  # a prompt
    IMAGE = "image"  # an image
    NOTHING = "nothing"  # a seed only
    TEXT_OR_IMAGE = "text_or_image"  # chain: a prompt or an image
    IMAGE_PAIR = "image_pair"  # interpolate: two images


class Mode(StrEnum):
    """What the engine generates; each is one call on ``UniDiffuserEngine``."""

    T2I = "t2i"  # text -> image
    I2T = "i2t"  # image -> caption
    JOINT = "joint"  # nothing -> (image, caption)
    IMAGE = "image"  # nothing -> image
    TEXT = "text"  # nothing -> caption
    I2T2I = "i2t2i"  # image variation: image -> text latent -> image
    T2I2T = "t2i2t"  # text variation: text -> image latent -> text
    CHAIN = "chain"  # n hops alternating modalities
    INTERPOLATE = "interpolate"  # k images between two real images

    @property
    def input(self) -> ModeInput:
        """What each record of this mode is made from."""
        return MODE_INPUTS[self]

    @property
    def makes_image(self) -> bool:
        """Whether the mode's result carries a generated image."""
        return self in _MAKES_IMAGE

    @property
    def makes_text(self) -> bool:
        """Whether the mode's result carries a generated caption."""
        return self in _MAKES_TEXT


MODE_INPUTS: dict[Mode, ModeInput] = {
    Mode.T2I: ModeInput.TEXT,
    Mode.T2I2T: ModeInput.TEXT,
    Mode.I2T: ModeInput.IMAGE,
    Mode.I2T2I: ModeInput.IMAGE,
    Mode.JOINT: ModeInput.NOTHING,
    Mode.IMAGE: ModeInput.NOTHING,
    Mode.TEXT: ModeInput.NOTHING,
    Mode.CHAIN: ModeInput.TEXT_OR_IMAGE,
    Mode.INTERPOLATE: ModeInput.IMAGE_PAIR,
}
_MAKES_IMAGE = frozenset({Mode.T2I, Mode.JOINT, Mode.IMAGE, Mode.I2T2I, Mode.CHAIN, Mode.INTERPOLATE})
_MAKES_TEXT = frozenset({Mode.I2T, Mode.JOINT, Mode.TEXT, Mode.T2I2T, Mode.CHAIN})


class EngineConfigError(ValueError):
    """The engine configuration is invalid; the message lists every problem."""


class SamplingConfig(BaseModel):
    """What decides a record's output. Defaults follow the UniDiffuser reference (50 steps, guidance 7)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(Mode.T2I, strict=False, description="what to generate (see Mode)")
    steps: int = Field(50, ge=1, le=1000, description="DPM-Solver++ steps")
    guidance_scale: float = Field(7.0, ge=0.0, description="classifier-free guidance; <= 1 disables it")
    t2i_cfg_mode: Literal["true_uncond", "empty_token"] = Field(
        "true_uncond", description="t2i's unconditional branch: text at max noise, or the empty prompt"
    )
    data_type: Literal[0, 1] = Field(1, description="v1 checkpoints: 1 = the v1 data, 0 = LAION-like")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="compute dtype")
    resolution: int | None = Field(None, gt=0, description="image side in px; must match the checkpoint")
    compile: bool = Field(False, description="torch.compile the U-ViT")
    caption_beams: int = Field(5, ge=1, description="beam width of caption decoding")
    caption_max_tokens: int = Field(67, ge=1, description="longest caption, in tokens")
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger input images are errors (bomb guard)")

    def sampling_values(self) -> dict[str, Any]:
        """The values of the ``SamplingConfig`` fields alone (e.g. to build an ``EngineConfig`` from a spec)."""
        return {name: getattr(self, name) for name in SamplingConfig.model_fields}


class EngineConfig(SamplingConfig):
    """How the engine samples (``SamplingConfig``) and where and how it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    batch_size: int = Field(8, ge=1, description="records per forward (CFG branches are added on top)")
    min_image_side: int = Field(16, ge=1, description="smaller input images are errors")
    chain_hops: int = Field(3, ge=1, description="hops of the chain mode")
    interpolation_frames: int = Field(8, ge=2, description="images of the interpolate mode, ends included")

    @classmethod
    def build(cls, **values: Any) -> EngineConfig:
        """Validate ``values``; raise ``EngineConfigError`` naming every bad key at once."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
            )
            raise EngineConfigError(f"invalid engine config: {problems}") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype

    @property
    def cfg_enabled(self) -> bool:
        return self.guidance_scale > 1.0

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
