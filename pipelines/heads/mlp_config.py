"""The generic head format's ``head.json`` (see ``pipelines.heads.mlp``) and how its weights must be shaped:
plain data, no torch, so a job's ``validate`` checks a head's files without loading a network."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.heads.base import HeadError

FORMAT: Final = "unidiffuser-batch/mlp-head"
VERSION: Final = 1
CONFIG_FILE = "head.json"
WEIGHTS_FILE = "model.safetensors"
Activation = Literal["relu", "gelu", "silu", "tanh", "identity"]
Output = Literal["regression", "probability", "softmax"]


class MLPHeadConfig(BaseModel):
    """``head.json``: the head's shape and how its output becomes a score."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["unidiffuser-batch/mlp-head"] = FORMAT
    version: Literal[1] = VERSION
    input_dim: int = Field(ge=1, description="size of the CLIP image embedding the head takes")
    hidden: list[int] = Field(default_factory=list, description="hidden layer sizes; [] is a linear head")
    activation: Activation = Field("relu", description="between layers (none after the last)")
    normalize_input: bool = Field(True, description="L2-normalise the input before the first layer")
    output: Output = Field("regression", description="regression | probability | softmax")
    classes: int | None = Field(None, ge=2, description="softmax: number of classes")
    score_index: int | None = Field(
        None, ge=0, description="softmax: the class whose probability is the score"
    )
    labels: list[str] | None = Field(None, description="softmax: optional class names, one per class")
    description: str | None = Field(None, description="free text: what the score means")

    @model_validator(mode="after")
    def _output_fields(self) -> MLPHeadConfig:
        if any(size < 1 for size in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.output == "softmax":
            if self.classes is None or self.score_index is None:
                raise ValueError("output 'softmax' needs classes and score_index")
            if self.score_index >= self.classes:
                raise ValueError(f"score_index {self.score_index} is not a class of {self.classes}")
            if self.labels is not None and len(self.labels) != self.classes:
                raise ValueError(f"labels names {len(self.labels)} classes, classes is {self.classes}")
        elif self.classes is not None or self.score_index is not None or self.labels is not None:
            raise ValueError(
                f"classes, score_index and labels belong to output 'softmax', not {self.output!r}"
            )
        return self

    @property
    def output_dim(self) -> int:
        return self.classes if self.output == "softmax" and self.classes else 1

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor ``model.safetensors`` must hold, with its shape."""
        dims = [self.input_dim, *self.hidden, self.output_dim]
        shapes: dict[str, tuple[int, ...]] = {}
        for k, (fan_in, fan_out) in enumerate(pairwise(dims)):
            shapes[f"layers.{k}.weight"] = (fan_out, fan_in)
            shapes[f"layers.{k}.bias"] = (fan_out,)
        return shapes


def parse_head_config(text: str | bytes, where: str) -> MLPHeadConfig:
    """``head.json`` text -> config; every problem in one ``HeadError`` naming ``where`` (the file)."""
    try:
        return MLPHeadConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'head.json'}: {e['msg']}" for e in exc.errors()
        )
        raise HeadError(f"{where}: {problems}") from exc


def shape_problems(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """How a weights file's tensors differ from what the config needs (missing, unexpected, wrong shape)."""
    problems = []
    if missing := sorted(set(expected) - set(found)):
        problems.append(f"missing tensors {missing}")
    if unexpected := sorted(set(found) - set(expected)):
        problems.append(f"unexpected tensors {unexpected}")
    for key in sorted(set(expected) & set(found)):
        if tuple(found[key]) != tuple(expected[key]):
            problems.append(f"{key} has shape {tuple(found[key])}, expected {tuple(expected[key])}")
    return problems
