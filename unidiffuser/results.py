"""What the engine returns for each record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    """One record's output: an image and/or a text, or an error with its reason.

    ``flags`` lists what was done to the input on the way (``converted_from_RGBA``, ``prompt_truncated``, ...);
    ``prompt_used`` is, for a prompt cut to the text encoder's length, the part of it the model saw.
    ``hops`` holds every step of a chain (image, text, image, ...); ``frames`` the images of an interpolation.
    """

    image: np.ndarray | None = None  # (H, W, 3) uint8
    text: str | None = None
    error: str | None = None
    flags: list[str] = field(default_factory=list)
    prompt_used: str | None = None
    hops: list[Result] | None = None
    frames: list[np.ndarray] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, reason: str, flags: list[str] | None = None) -> Result:
        return cls(error=reason, flags=list(flags or []))
