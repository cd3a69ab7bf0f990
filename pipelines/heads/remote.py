"""Reading what a head folder holds where it lies (local or any fsspec URI) without copying it: its listing,
small JSON files and the tensor shapes of its weights (a safetensors header; a pickled state dict is read
whole, LAION's are a few MB). For validating a job before it runs."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from pipelines.heads.base import HeadError

_HEADER_LIMIT = 100 * 2**20  # a safetensors header larger than this is not a header


def open_folder(
    uri: str, storage_options: dict[str, Any] | None
) -> tuple[AbstractFileSystem, str, dict[str, int]]:
    """The filesystem, root and ``{file name: size}`` of a folder; a missing folder is a ``HeadError``."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise HeadError(f"no head folder at {uri}")
    files = {
        info["name"].rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0)
        for info in fs.ls(root, detail=True)
        if info.get("type") != "directory"
    }
    return fs, root, files


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    with fs.open(path, "rb") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise HeadError(f"{path} does not hold a JSON object")
    return data


def safetensors_shapes(fs: AbstractFileSystem, path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header (its first bytes only)."""
    with fs.open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _HEADER_LIMIT:
            raise HeadError(f"{path} is not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def pickled_shapes(fs: AbstractFileSystem, path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a pickled torch state dict (read with ``weights_only``)."""
    import torch  # only a pickled file needs it; a safetensors header is plain JSON

    with fs.open(path, "rb") as f:
        loaded = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise HeadError(f"{path} does not hold a state dict")
    return {k: tuple(v.shape) for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def weight_shapes(fs: AbstractFileSystem, path: str) -> dict[str, tuple[int, ...]]:
    return safetensors_shapes(fs, path) if path.endswith(".safetensors") else pickled_shapes(fs, path)


def clip_embedding_dim(uri: str, storage_options: dict[str, Any] | None = None) -> int:
    """The image embedding size of a CLIP folder (``projection_dim`` of its ``config.json``), read in
    place."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    path = f"{root.rstrip('/')}/config.json"
    if not fs.exists(path):
        raise HeadError(f"no config.json in the CLIP folder {uri}")
    config = read_json(fs, path)
    dim = config.get("projection_dim")
    if dim is None:
        raise HeadError(f"{uri.rstrip('/')}/config.json has no projection_dim (is it a CLIPModel folder?)")
    return int(dim)
