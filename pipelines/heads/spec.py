"""How a job names a score head: the validated spec entry (one per head).

    name: aesthetic            # the head's name (and, by default, where its score goes: see ``column``)
    kind: laion_aesthetic      # laion_aesthetic | laion_nsfw | mlp | classifier
    uri: s3://models/heads/aesthetic-v2/     # a folder, local or any fsspec URI
    min: 5.0                   # reject records scoring below / above (either may be left out)
    applies_to: output         # judge the generated images, or the input images (captioning jobs)

``column`` defaults to LAION's names: an aesthetic head writes ``aesthetic``, a not-safe head ``punsafe``, a
watermark head ``pwatermark``; any other head its own name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.spec_fields import Location, Strict

HeadKind = Literal["laion_aesthetic", "laion_nsfw", "mlp", "classifier"]
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
_NOT_SAFE_WORDS = ("nsfw", "unsafe", "not_safe", "notsafe")


def default_column(name: str, kind: str) -> str:
    """LAION's column for the head's role, read from its kind or name; otherwise the name itself."""
    lowered = name.lower()
    if kind == "laion_aesthetic" or "aesthetic" in lowered:
        return "aesthetic"
    if kind == "laion_nsfw" or lowered == "punsafe" or any(word in lowered for word in _NOT_SAFE_WORDS):
        return "punsafe"
    if "watermark" in lowered:
        return "pwatermark"
    return name


class HeadSpec(Strict):
    """One score head of a job."""

    name: str = Field(pattern=NAME_PATTERN, description="the head's name")
    kind: HeadKind = Field(
        description="laion_aesthetic (LAION aesthetic predictor v1/v2 file), laion_nsfw (LAION CLIP-based "
        "NSFW detector file), mlp (the generic head.json + model.safetensors format), classifier (a "
        "transformers AutoModelForImageClassification folder)"
    )
    uri: Location = Field(min_length=1, description="the head's folder: local path or fsspec URI")
    label: str | None = Field(
        None, description="classifier: the label (config.id2label) whose probability is the score"
    )
    column: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="output column of the score (default: aesthetic, punsafe or pwatermark by role, "
        "else the name)",
    )
    min: float | None = Field(None, description="reject records scoring below")
    max: float | None = Field(None, description="reject records scoring above")
    applies_to: Literal["output", "input"] = Field(
        "output",
        description="score the generated images, or the input images (captioning jobs: before generation)",
    )

    @model_validator(mode="after")
    def _check(self) -> HeadSpec:
        if self.kind == "classifier" and not self.label:
            raise ValueError(
                f"head {self.name!r}: label is required for kind 'classifier' (a label of config.id2label)"
            )
        if self.kind != "classifier" and self.label is not None:
            raise ValueError(
                f"head {self.name!r}: label applies to kind 'classifier' only, not {self.kind!r}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"head {self.name!r}: min ({self.min}) must not exceed max ({self.max})")
        if self.column is None:
            self.column = default_column(self.name, self.kind)
        return self

    @property
    def input(self) -> Literal["embedding", "image"]:
        """What the head scores: CLIP embeddings (LAION and mlp heads) or images (classifiers)."""
        return "image" if self.kind == "classifier" else "embedding"
