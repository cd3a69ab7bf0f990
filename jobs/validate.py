"""Pre-flight checks before any GPU work: the spec is valid and every location it names is reachable."""

from __future__ import annotations

import uuid

import fsspec

from pipelines.config import PipelineConfig
from unidiffuser.checkpoint import read_checkpoint_resolution


def _fs(uri: str, options: dict):
    return fsspec.core.url_to_fs(uri.removeprefix("file://") if uri.startswith("file://") else uri, **options)


def check_input(config: PipelineConfig, options: dict) -> list[str]:
    spec = config.input
    if spec.kind == "count":
        return []
    try:
        fs, path = _fs(spec.uri, options)
        found = bool(fs.glob(path)) if any(ch in path for ch in "*?[") else fs.exists(path)
    except Exception as exc:  # any storage error is a reachability problem to report
        return [f"input.uri: cannot reach {spec.uri}: {type(exc).__name__}: {exc}"]
    return [] if found else [f"input.uri: nothing found at {spec.uri}"]


def check_checkpoint(config: PipelineConfig, options: dict) -> list[str]:
    try:
        resolution = read_checkpoint_resolution(config.model.checkpoint, storage_options=options)
    except Exception as exc:
        return [f"model.checkpoint: {exc}"]
    wanted = config.model.resolution
    if wanted is not None and wanted != resolution:
        return [f"model.resolution: {wanted} does not match the checkpoint ({resolution} px)"]
    return []


def check_clip(config: PipelineConfig, options: dict) -> list[str]:
    if not config.clip.enabled:
        return []
    try:
        fs, path = _fs(config.clip.model, options)
        if not fs.exists(f"{path.rstrip('/')}/config.json"):
            return [f"clip.model: no config.json in {config.clip.model}"]
    except Exception as exc:
        return [f"clip.model: cannot reach {config.clip.model}: {type(exc).__name__}: {exc}"]
    return []


def check_output(config: PipelineConfig, options: dict) -> list[str]:
    """The output location accepts a write (a probe file is written and removed)."""
    try:
        fs, path = _fs(config.output.uri, options)
        probe = f"{path.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as exc:
        return [f"output.uri: cannot write to {config.output.uri}: {type(exc).__name__}: {exc}"]
    return []


def preflight(config: PipelineConfig) -> list[str]:
    """Every reachability problem of a (structurally valid) spec, all at once."""
    options = config.storage.storage_options()
    checks = (check_input, check_checkpoint, check_clip, check_output)
    return [problem for check in checks for problem in check(config, options)]
