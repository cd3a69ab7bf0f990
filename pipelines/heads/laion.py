"""LAION's published CLIP heads, read from their files as published, into the generic embedding scorer.

Layouts (torch state dicts, ``.pth`` as published or ``.safetensors`` with the same keys), each over the
L2-normalised CLIP image embedding, recognised from the tensor names and shapes alone:

- aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor, e.g.
  ``sac+logos+ava1-l14-linearMSE.pth``): ``layers`` is an ``nn.Sequential`` of Linear(d, 1024), Dropout,
  Linear(1024, 128), Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1), so the linear weights
  are ``layers.{0,2,4,6,7}.*`` and nothing lies between them at inference; the ``reluMSE`` variant has a ReLU
  after each hidden linear and its linears at ``layers.{0,3,6,9,11}.*``. The score is the regression output
  (LAION's ``aesthetic`` column, about 1-10).
- aesthetic predictor v1 (LAION-AI/aesthetic-predictor, ``sa_0_4_vit_l_14_linear.pth``): one
  ``nn.Linear(d, 1)``, keys ``weight`` and ``bias``.
- CLIP-based NSFW detector (LAION-AI/CLIP-based-NSFW-Detector, ``clip_ViT-L-14_openai_binary_nsfw_head.pth``,
  the B-32 one too): ``norm.mean`` / ``norm.variance`` (``(x - mean) / (sqrt(variance) + 1e-10)``), then
  ``linear_1 .. linear_k`` with ReLU between and a sigmoid after the last: the probability of NSFW
  (LAION's ``punsafe``). Its ViT-H-14 head is another module (an ``nn.Sequential`` with neither the
  normalisation nor the sigmoid); it is not recognised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.heads.base import HeadError, StateDict, read_state_dict, weight_file
from pipelines.heads.mlp_config import MLPHeadConfig

if TYPE_CHECKING:  # the scorer (torch) loads with the weights; reading a layout needs neither
    import torch

    from pipelines.heads.mlp import MLPHead

AESTHETIC_V2_LINEAR = (0, 2, 4, 6, 7)  # Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
AESTHETIC_V2_RELU = (0, 3, 6, 9, 11)  # Linear, ReLU, Dropout, ... Linear, ReLU, Linear
_SEQUENTIAL_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)")
_NSFW_KEY = re.compile(r"linear_(\d+)\.(weight|bias)")
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class LaionLayout:
    """A recognised published layout: what it is, the equivalent generic config and how its keys map."""

    name: str
    kind: str  # the head spec kind that reads it
    config: MLPHeadConfig
    renames: dict[str, str] = field(default_factory=dict)  # published key -> generic key
    standardized: bool = False  # carries norm.mean / norm.variance


def _chain(linears: list[tuple[str, tuple[int, ...]]], where: str) -> tuple[int, list[int]]:
    """Input size and hidden sizes of consecutive linear layers (name, weight shape); one output."""
    for (name, shape), (next_name, next_shape) in pairwise(linears):
        if len(shape) != 2 or len(next_shape) != 2 or next_shape[1] != shape[0]:
            raise HeadError(f"{where}: {name} {shape} does not feed {next_name} {next_shape}")
    last_name, last = linears[-1]
    if len(last) != 2 or last[0] != 1:
        raise HeadError(f"{where}: the last layer {last_name} has shape {last}, expected one output")
    return linears[0][1][1], [shape[0] for _, shape in linears[:-1]]


def _renames(published: list[str]) -> dict[str, str]:
    return {f"{src}.{p}": f"layers.{k}.{p}" for k, src in enumerate(published) for p in ("weight", "bias")}


def detect_layout(shapes: Shapes, where: str) -> LaionLayout:
    """Which published LAION layout a state dict (its tensor names and shapes) has; ``where``: the file."""
    keys = set(shapes)
    if keys == {"weight", "bias"}:
        dim, hidden = _chain([("weight", tuple(shapes["weight"]))], where)
        config = MLPHeadConfig(input_dim=dim, hidden=hidden, normalize_input=True, output="regression")
        renames = {"weight": "layers.0.weight", "bias": "layers.0.bias"}
        return LaionLayout("aesthetic-v1-linear", "laion_aesthetic", config, renames)
    sequential = {m.group(1) for k in keys if (m := _SEQUENTIAL_KEY.fullmatch(k))}
    if sequential and len(keys) == 2 * len(sequential):
        indices = tuple(sorted(int(i) for i in sequential))
        if indices not in (AESTHETIC_V2_LINEAR, AESTHETIC_V2_RELU):
            raise HeadError(
                f"{where}: linear layers at layers.{list(indices)} match neither published aesthetic "
                f"predictor v2 layout (layers.{list(AESTHETIC_V2_LINEAR)}, "
                f"or layers.{list(AESTHETIC_V2_RELU)} with ReLU)"
            )
        published = [f"layers.{i}" for i in indices]
        dim, hidden = _chain([(p, tuple(shapes[f"{p}.weight"])) for p in published], where)
        relu = indices == AESTHETIC_V2_RELU
        config = MLPHeadConfig(
            input_dim=dim, hidden=hidden, activation="relu" if relu else "identity", output="regression"
        )
        return LaionLayout("aesthetic-v2-relu" if relu else "aesthetic-v2", "laion_aesthetic", config,
                           _renames(published))  # fmt: skip
    numbered = {m.group(1) for k in keys if (m := _NSFW_KEY.fullmatch(k))}
    if {"norm.mean", "norm.variance"} <= keys and len(keys) == 2 + 2 * len(numbered):
        indices = tuple(sorted(int(i) for i in numbered))
        if indices != tuple(range(1, len(indices) + 1)):
            raise HeadError(
                f"{where}: NSFW detector layers linear_{list(indices)} are not linear_1 .. linear_k"
            )
        published = [f"linear_{i}" for i in indices]
        dim, hidden = _chain([(p, tuple(shapes[f"{p}.weight"])) for p in published], where)
        if tuple(shapes["norm.mean"]) != (dim,) or tuple(shapes["norm.variance"]) != (dim,):
            raise HeadError(f"{where}: norm.mean / norm.variance do not have the input size {dim}")
        config = MLPHeadConfig(input_dim=dim, hidden=hidden, activation="relu", output="probability")
        return LaionLayout("nsfw-detector", "laion_nsfw", config, _renames(published), standardized=True)
    shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
    raise HeadError(
        f"{where}: not a published LAION head layout (aesthetic v1: weight, bias; aesthetic v2: layers.0 .. "
        f"layers.7; NSFW detector: norm.mean, norm.variance, linear_1 ..); its tensors: {shown}"
    )


def check_kind(layout: LaionLayout, kind: str, where: str) -> None:
    """The spec's kind must be the one that reads this layout."""
    if layout.kind != kind:
        raise HeadError(
            f"{where} holds LAION's {layout.name} layout, which is kind {layout.kind!r}, not {kind!r}"
        )


def load_laion_head(
    folder: Path, *, kind: str, name: str, identity: str, device: str | torch.device = "cpu"
) -> MLPHead:
    """The head in a local folder holding one published LAION weight file."""
    from pipelines.heads.mlp import MLPHead

    path = weight_file(folder)
    state_dict = read_state_dict(path)
    layout = detect_layout({k: tuple(v.shape) for k, v in state_dict.items()}, str(path))
    check_kind(layout, kind, str(path))
    weights: StateDict = {layout.renames[k]: v for k, v in state_dict.items() if k in layout.renames}
    standardize = (state_dict["norm.mean"], state_dict["norm.variance"]) if layout.standardized else None
    return MLPHead(name, layout.config, weights, identity=identity, device=device, standardize=standardize,
                   source=str(path))  # fmt: skip
