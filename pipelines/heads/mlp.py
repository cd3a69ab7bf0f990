"""The generic head format: a linear or MLP head a user trains on CLIP image embeddings, and its scorer.

A head folder holds two files::

    head.json           {"format": "unidiffuser-batch/mlp-head", "version": 1, "input_dim": 768,
                         "hidden": [256], "activation": "relu", "normalize_input": true,
                         "output": "probability"}
    model.safetensors   layers.0.weight (256, 768), layers.0.bias (256,), layers.1.weight (1, 256), ...

``layers.{k}`` are the linear layers in order (``hidden`` sizes, then the output layer), with ``activation``
between them and none after the last. ``normalize_input``: the head L2-normalises its input first (the score
stage's embeddings already are, so such a head takes raw or normalised features alike). ``output``:
``regression`` (the single output as is), ``probability`` (sigmoid of the single logit) or ``softmax`` (over
``classes`` logits; the score is the probability of class ``score_index``; ``labels`` optionally names them).

Write one with ``save_mlp_head(folder, config, net.state_dict())`` after training ``build_mlp(config)``.
The published LAION heads (``pipelines.heads.laion``) are read into the same scorer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pipelines.heads.base import HeadError, StateDict, read_state_dict
from pipelines.heads.mlp_config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    MLPHeadConfig,
    parse_head_config,
    shape_problems,
)
from unidiffuser.uvit import row_stable_linear

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "identity": lambda x: x,
}  # fmt: skip
# rows per forward on CPU, where the row-stable product materialises rows x out x in floats (64 MiB at most)
_CPU_ELEMENTS_PER_CHUNK = 2**24


class MLPNet(nn.Module):
    """The linear layers and activation of a head (no input normalisation, no output transform)."""

    def __init__(self, config: MLPHeadConfig):
        super().__init__()
        dims = [config.input_dim, *config.hidden, config.output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.activation: Callable[[torch.Tensor], torch.Tensor] = _ACTIVATIONS[config.activation]
        self.row_stable = True  # training may turn it off: plain matmuls are faster to differentiate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits / raw outputs (n, output_dim). On CPU every row's result is independent of the batch
        (``row_stable_linear``), so a record's score never depends on its neighbours."""
        for k, layer in enumerate(self.linears):
            x = row_stable_linear(layer, x) if self.row_stable else layer(x)
            if k < len(self.layers) - 1:
                x = self.activation(x)
        return x

    @property
    def linears(self) -> list[nn.Linear]:
        return [cast(nn.Linear, layer) for layer in self.layers]

    @property
    def largest_layer(self) -> int:
        return max(layer.weight.numel() for layer in self.linears)


def build_mlp(config: MLPHeadConfig) -> MLPNet:
    """A freshly initialised network of ``config``'s shape (train it, then ``save_mlp_head``)."""
    return MLPNet(config)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (the score stage's normalisation, zero rows kept at zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class MLPHead:
    """An embedding head: input normalisation, the MLP and the output transform, from any source layout.

    ``standardize`` (mean, variance): an extra per-feature ``(x - mean) / (sqrt(variance) + 1e-10)`` after the
    L2 normalisation (LAION's NSFW detector carries one; the generic format does not)."""

    input: Literal["embedding"] = "embedding"

    def __init__(
        self,
        name: str,
        config: MLPHeadConfig,
        state_dict: StateDict,
        *,
        identity: str,
        device: str | torch.device = "cpu",
        standardize: tuple[torch.Tensor, torch.Tensor] | None = None,
        source: str = "",
    ):
        problems = shape_problems(config.weight_shapes(), {k: tuple(v.shape) for k, v in state_dict.items()})
        if problems:
            raise HeadError(
                f"head {name!r}: weights of {source or 'the head'} do not fit: {'; '.join(problems)}"
            )
        self.name = name
        self.identity = identity
        self.config = config
        self.device = torch.device(device)
        self.net = MLPNet(config)
        self.net.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
        self.net.to(self.device).eval()
        self.standardize = None
        if standardize is not None:
            mean, variance = (t.float().to(self.device) for t in standardize)
            self.standardize = (mean, variance.sqrt() + 1e-10)

    @property
    def embedding_dim(self) -> int:
        return self.config.input_dim

    @torch.no_grad()
    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, embedding_dim) -> (n,) float32 scores; NaN / inf come out as computed."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise HeadError(
                f"head {self.name!r} takes embeddings of size {self.embedding_dim}, "
                f"got an array of shape {x.shape}"
            )
        on_cpu = self.device.type == "cpu"
        chunk = max(1, _CPU_ELEMENTS_PER_CHUNK // self.net.largest_layer if on_cpu else len(x))
        scores = [
            self._score(torch.from_numpy(x[s : s + chunk]).to(self.device)) for s in range(0, len(x), chunk)
        ]
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def _score(self, x: torch.Tensor) -> np.ndarray:
        if self.config.normalize_input:
            x = l2_normalise(x)
        if self.standardize is not None:
            mean, scale = self.standardize
            x = (x - mean) / scale
        out = self.net(x)
        if self.config.output == "probability":
            score = torch.sigmoid(out[:, 0])
        elif self.config.output == "softmax":
            score = torch.softmax(out, dim=-1)[:, self.config.score_index]
        else:
            score = out[:, 0]
        return score.float().cpu().numpy()


def save_mlp_head(
    folder: str | os.PathLike, config: MLPHeadConfig, state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``head.json`` and ``model.safetensors`` into the local ``folder`` (created); the weights must be
    exactly the tensors the config describes (``build_mlp(config).state_dict()`` after training)."""
    problems = shape_problems(config.weight_shapes(), {k: tuple(v.shape) for k, v in state_dict.items()})
    if problems:
        raise HeadError(f"weights do not fit head.json: {'; '.join(problems)}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()}, root / WEIGHTS_FILE)
    (root / CONFIG_FILE).write_text(
        json.dumps(config.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    )
    return root


def load_mlp_head(folder: Path, *, name: str, identity: str, device: str | torch.device = "cpu") -> MLPHead:
    """The head in a local folder of the generic format."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise HeadError(
            f"head {name!r}: no {CONFIG_FILE} in {folder} (kind 'mlp' is the generic head format)"
        )
    config = parse_head_config(config_path.read_bytes(), str(config_path))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise HeadError(f"head {name!r}: no {WEIGHTS_FILE} in {folder}")
    return MLPHead(
        name, config, read_state_dict(weights), identity=identity, device=device, source=str(weights)
    )
