"""The one interface every score head offers, and what loading a head's files may raise.

Two kinds of heads: an *embedding* head scores the L2-normalised CLIP image embeddings the score stage has
already computed (``input == "embedding"``, ``score_embeddings``); an *image* head is its own network over the
pixels (``input == "image"``, ``score_images``). Both return one float per record, NaN and inf included as
computed (see ``pipelines.heads.bounds.bad_scores``). ``identity`` is the version of the head's files
(``unidiffuser.checkpoint.checkpoint_identity`` of its folder), for pinning and for output fingerprints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

# torch loads with a head's weights, not with this interface (a job's driver never needs it)
if TYPE_CHECKING:
    import torch

HeadInput = Literal["embedding", "image"]
StateDict = dict[str, "torch.Tensor"]


class HeadError(ValueError):
    """A head's folder, files or settings cannot give a working head; the message names what and where."""


@runtime_checkable
class EmbeddingHead(Protocol):
    """Scores CLIP image embeddings."""

    name: str
    input: Literal["embedding"]
    identity: str

    @property
    def embedding_dim(self) -> int:
        """The size of the embeddings it takes."""
        ...

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, embedding_dim) float -> (n,) float32 scores."""
        ...


@runtime_checkable
class ImageHead(Protocol):
    """Scores images itself (its own network and image processor)."""

    name: str
    input: Literal["image"]
    identity: str

    def score_images(self, images: list[np.ndarray]) -> np.ndarray:
        """n uint8 (H, W, 3) RGB images -> (n,) float32 scores."""
        ...


ScoreHead = EmbeddingHead | ImageHead

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: Path) -> StateDict:
    """A torch state dict from a ``.safetensors`` file or a pickled ``.pth`` / ``.pt`` / ``.bin`` one (read
    with ``weights_only``: tensors only, no code). A pickled checkpoint that wraps it under ``state_dict`` is
    unwrapped."""
    import torch
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HeadError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise HeadError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(loaded)


def weight_file(folder: Path) -> Path:
    """The single weights file of a head folder (any of ``WEIGHT_SUFFIXES``)."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not found:
        raise HeadError(f"no weights in {folder}: expected one file ending in {', '.join(WEIGHT_SUFFIXES)}")
    if len(found) > 1:
        raise HeadError(
            f"{folder} holds several weight files ({', '.join(p.name for p in found)}): "
            "keep one per head folder"
        )
    return found[0]
