"""Engine configuration: one validated model, every problem reported at once."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


if TYPE_CHECKING:
    import torch


class EngineConfigError(ValueError):
    """The engine configuration is invalid; the message lists every problem."""


class EngineConfig(BaseModel):
    """How the engine samples. Defaults follow the UniDiffuser reference (50 steps, guidance 7, 512 px)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(Mode.T2I, description="default mode of `UniDiffuserEngine.run`")
    steps: int = Field(50, ge=1, le=1000, description="DPM-Solver steps")
    guidance_scale: float = Field(7.0, ge=0.0, description="classifier-free guidance; <= 1 disables it")
    t2i_cfg_mode: Literal["true_uncond", "empty_token"] = Field(
        "true_uncond", description="t2i unconditional branch: text at max noise, or the empty prompt"
    )
    data_type: Literal[0, 1] = Field(1, description="v1 checkpoints only: 1 = the v1 data, 0 = LAION-like")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    compile: bool = Field(False, description="torch.compile the U-ViT")
    resolution: int | None = Field(None, gt=0, description="image side in px; must match the checkpoint")
    batch_size: int = Field(8, ge=1, description="records per forward (CFG branches are added on top)")
    caption_beams: int = Field(5, ge=1)
    caption_max_tokens: int = Field(67, ge=1)
    max_image_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb guard")
    min_image_side: int = Field(16, ge=1)
    chain_hops: int = Field(3, ge=1, description="hops of the chain mode")
    interpolation_frames: int = Field(8, ge=2, description="images of the interpolate mode, ends included")

    @classmethod
    def build(cls, **values: object) -> EngineConfig:
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

        return getattr(torch, self.dtype)

    @property
    def cfg_enabled(self) -> bool:
        return self.guidance_scale > 1.0

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
