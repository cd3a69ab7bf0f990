"""Find, copy, pin and check a UniDiffuser checkpoint (diffusers folder layout) at a local path or fsspec URI.

Remote checkpoints are copied once per machine and version into a local cache. A checkpoint's version is
its *identity*: a hash of its folder's listing (each file's path, size and ETag / generation / mtime), read
with one listing request and no download, so a checkpoint replaced at the same URI is copied again instead of
served stale. When the listing fails (storage unreachable), the newest complete copy of that URI is used,
with a warning. The copy is made under a file lock into a temporary folder and renamed into place, so
concurrent processes on one node never see a partial copy. Nothing here ever contacts a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from unidiffuser.file_versions import file_version
from unidiffuser.locations import describe_error, is_local, local_path, open_location, redact

COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "image_encoder",
    "clip_image_processor",
    "clip_tokenizer",
    "text_decoder",
    "text_tokenizer",
    "scheduler",
)
# model_index.json of the layout. The hub names the library of unet/text_decoder "unidiffuser"; diffusers would
# resolve that as a top-level module (this package), so "diffusers", which exports both classes, is written.
MODEL_INDEX = {
    "_class_name": "UniDiffuserPipeline",
    "clip_image_processor": ["transformers", "CLIPImageProcessor"],
    "clip_tokenizer": ["transformers", "CLIPTokenizer"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "text_decoder": ["diffusers", "UniDiffuserTextDecoder"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_tokenizer": ["transformers", "GPT2Tokenizer"],
    "unet": ["diffusers", "UniDiffuserModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_COMPLETE_MARKER = ".unidiffuser-complete"
log = logging.getLogger(__name__)
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


class CheckpointError(FileNotFoundError):
    """A checkpoint location, component or file is missing or unusable."""


class CheckpointChangedError(RuntimeError):
    """A checkpoint pinned by its identity (see ``resolve_checkpoint``) was replaced since it was pinned."""


def default_cache_dir() -> Path:
    """``$UNIDIFFUSER_CACHE`` or ``~/.cache/unidiffuser-batch/checkpoints``."""
    root = os.environ.get("UNIDIFFUSER_CACHE") or Path.home() / ".cache" / "unidiffuser-batch"
    return Path(root) / "checkpoints"


def checkpoint_identity(uri: str | os.PathLike, *, storage_options: dict[str, Any] | None = None) -> str:
    """A hash of the checkpoint folder's listing (each file's relative path, size and version).

    It changes when any file of the checkpoint is replaced, and reading it downloads nothing, so it keys the
    node-local cache and goes into a job's output fingerprint (units made by an older checkpoint are redone).
    """
    uri = os.fspath(uri)
    fs, root = open_location(uri, storage_options)
    root = root.rstrip("/")
    found = fs.find(root, detail=True) if fs.isdir(root) else {}
    files = sorted(
        (path[len(root) + 1 :], info.get("size"), file_version(info))
        for path, info in found.items()
        if info.get("type") != "directory"
    )
    if not files:
        raise CheckpointError(f"checkpoint folder not found: {redact(uri)}")
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def resolve_checkpoint(
    uri: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
    identity: str | None = None,
) -> Path:
    """Return a local folder holding the checkpoint, copying a remote one into the node-local cache once
    per version (see the module doc).

    ``identity`` pins the version (a ``checkpoint_identity`` taken earlier, e.g. when a job was planned): a
    cached copy of it is used without listing the remote, and a checkpoint that no longer has it is an error
    rather than a silent switch to another version in the middle of a job.
    """
    uri = os.fspath(uri)
    if is_local(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint folder not found: {path}")
        if identity is not None:
            _check_unchanged(uri, identity, checkpoint_identity(path))
        return path
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    location = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    if identity is not None:
        if (cache_root / f"{location}-{identity}" / _COMPLETE_MARKER).exists():
            return cache_root / f"{location}-{identity}"
        _check_unchanged(uri, identity, checkpoint_identity(uri, storage_options=storage_options))
    else:
        try:
            identity = checkpoint_identity(uri, storage_options=storage_options)
        except Exception as exc:  # unreachable or gone: a complete copy made earlier still serves
            cached = _newest_copy(cache_root, location)
            if cached is None and isinstance(exc, CheckpointError):
                raise
            if cached is None:
                raise CheckpointError(f"cannot list checkpoint {redact(uri)}: {describe_error(exc)}") from exc
            log.warning("cannot list checkpoint %s (%s): using the cached copy %s", redact(uri),
                        describe_error(exc), cached)  # fmt: skip
            return cached
    target = cache_root / f"{location}-{identity}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    with open(cache_root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE_MARKER).exists():
            return target
        _download(uri, target, storage_options or {}, identity)
    return target


def _check_unchanged(uri: str, expected: str, found: str) -> None:
    if found != expected:
        raise CheckpointChangedError(
            f"checkpoint {redact(uri)} changed since it was pinned (version {expected}, now {found}): "
            "its files were replaced; run again to use the new version throughout"
        )


def _newest_copy(cache_root: Path, location: str) -> Path | None:
    """The most recently completed cached copy of one checkpoint URI, if any."""
    copies = [p for p in cache_root.glob(f"{location}-*") if (p / _COMPLETE_MARKER).is_file()]
    return max(copies, key=lambda p: (p / _COMPLETE_MARKER).stat().st_mtime_ns, default=None)


def read_checkpoint_resolution(
    uri: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> int:
    """The checkpoint's image side in pixels, from its unet and vae configs only (no weights are copied)."""
    fs, root = open_location(uri, storage_options)
    unet = _read_remote_config(fs, root, uri, "unet", ("sample_size",))
    vae = _read_remote_config(fs, root, uri, "vae", ("block_out_channels",))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def resolution_problem(wanted: int | None, checkpoint_px: int) -> str | None:
    """Why an asked-for ``resolution`` cannot run on a checkpoint of ``checkpoint_px`` pixels, or None."""
    if wanted is None or wanted == checkpoint_px:
        return None
    return f"resolution {wanted} does not match the checkpoint ({checkpoint_px} px)"


def _read_remote_config(
    fs: AbstractFileSystem, root: str, uri: str | os.PathLike, component: str, required: tuple[str, ...]
) -> dict[str, Any]:
    """``{component}/config.json`` parsed, with every ``required`` key present; CheckpointError naming the
    file (and the key) otherwise."""
    shown = f"{redact(os.fspath(uri)).rstrip('/')}/{component}/config.json"
    path = f"{root.rstrip('/')}/{component}/config.json"
    if not fs.exists(path):
        raise CheckpointError(f"missing config file: {shown}")
    try:
        config = json.loads(fs.cat_file(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{shown} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{shown} is not a JSON object")
    missing = [key for key in required if key not in config]
    if missing:
        raise CheckpointError(f"{shown} lacks {', '.join(repr(k) for k in missing)}")
    return config


def checkpoint_problems(
    uri: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Every problem of a checkpoint that can be known without loading it: missing components, config files
    that do not parse, weight files missing or damaged (a safetensors header is read and checked against the
    file's size: two small reads per file). Each names the file."""
    fs, root = open_location(uri, storage_options)
    shown = redact(os.fspath(uri)).rstrip("/")
    root = root.rstrip("/")
    if not fs.isdir(root):
        return [f"checkpoint folder not found: {shown}"]
    problems = []
    listing = {p[len(root) + 1 :]: info for p, info in fs.find(root, detail=True).items()}
    for component in COMPONENTS:
        if not any(name.startswith(f"{component}/") for name in listing):
            problems.append(
                f"checkpoint component '{component}' missing: expected folder {shown}/{component}"
            )
    for component in ("unet", "vae"):
        if f"{component}/config.json" in listing:
            try:
                _read_remote_config(fs, root, uri, component, _REQUIRED_CONFIG_KEYS[component])
            except CheckpointError as exc:
                problems.append(str(exc))
    for component in _WEIGHTED_COMPONENTS:
        names = [f"{component}/{name}" for name in WEIGHT_FILES if f"{component}/{name}" in listing]
        if not names and any(name.startswith(f"{component}/") for name in listing):
            problems.append(f"no weights in {shown}/{component}: expected one of {', '.join(WEIGHT_FILES)}")
        if names:
            problem = _weight_file_problem(fs, f"{root}/{names[0]}", int(listing[names[0]].get("size") or 0))
            if problem:
                problems.append(f"{shown}/{names[0]}: {problem}")
    return problems


_REQUIRED_CONFIG_KEYS = {"unet": ("sample_size",), "vae": ("block_out_channels",)}
_WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "image_encoder", "text_decoder")


def _weight_file_problem(fs: AbstractFileSystem, path: str, size: int) -> str | None:
    """Why a weight file cannot be loaded, judged from its header and size, or None."""
    if size == 0:
        return "empty file"
    if not path.endswith(".safetensors"):
        return None  # torch pickles have no cheap header to check
    with fs.open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes): no safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"truncated or not safetensors: header of {length} bytes in a {size}-byte file"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "invalid safetensors header (not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and "data_offsets" in v]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"truncated: tensors need {needed} bytes, the file has {size}"
    return None


def _download(uri: str, target: Path, storage_options: dict[str, Any], identity: str) -> None:
    fs, root = open_location(uri, storage_options)
    if not fs.isdir(root):
        raise CheckpointError(f"checkpoint folder not found: {redact(uri)}")
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
        (staging / _COMPLETE_MARKER).write_text(json.dumps({"uri": uri, "identity": identity}))
        if target.exists():  # a stale, incomplete copy from a crashed process
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def component_dir(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise CheckpointError(f"checkpoint component '{name}' missing: expected folder {path}")
    return path


def read_config(folder: Path, filename: str = "config.json") -> dict:
    path = folder / filename
    if not path.is_file():
        raise CheckpointError(f"missing config file: {path}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return config
