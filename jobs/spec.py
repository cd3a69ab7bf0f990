"""Job specs: YAML files validated by ``pipelines.config.PipelineConfig``, with ``--set key=value`` overrides.

Every problem is reported at once with its key path, e.g. ``model.steps: Input should be greater than or
equal to 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config import INPUT_KIND_FOR_MODE, PipelineConfig
from unidiffuser.config import Mode


class SpecError(ValueError):
    """A job spec that cannot be used; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {key}: {part} is not a section")
                break
            node = child
        else:
            node[leaf] = yaml.safe_load(raw) if raw else None
    if problems:
        raise SpecError(problems)
    return data


def _format(err: dict) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "spec"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{path}: {message}"


def _cross_section_problems(data: dict[str, Any]) -> list[str]:
    """Checks between sections (model.mode vs input.kind) that the model only runs once every field is valid;
    run here on the raw spec so that they are reported together with field errors."""
    model, source = data.get("model"), data.get("input")
    if not isinstance(model, dict) or not isinstance(source, dict):
        return []
    try:
        mode = Mode(model.get("mode", Mode.T2I.value))
    except ValueError:
        return []
    wanted, kind = INPUT_KIND_FOR_MODE.get(mode), source.get("kind")
    if wanted is None or kind not in ("prompts", "images", "count") or kind == wanted:
        return []
    return [f"spec: model.mode {mode.value!r} needs input.kind {wanted!r}, got {kind!r}"]


def parse_spec(data: dict[str, Any], *, base_dir: Path | None = None) -> PipelineConfig:
    """Validate a spec dict; relative local paths are resolved against ``base_dir`` (the spec's folder)."""
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_format(err) for err in exc.errors()]
        raise SpecError(problems + [p for p in _cross_section_problems(data) if p not in problems]) from None
    return _resolve_paths(config, base_dir) if base_dir else config


def _resolve_paths(config: PipelineConfig, base_dir: Path) -> PipelineConfig:
    def resolve(uri: str | None) -> str | None:
        if uri is None or "://" in uri or os.path.isabs(uri):
            return uri
        return str((base_dir / uri).resolve())

    return config.model_copy(
        update={
            "input": config.input.model_copy(update={"uri": resolve(config.input.uri)}),
            "model": config.model.model_copy(update={"checkpoint": resolve(config.model.checkpoint)}),
            "clip": config.clip.model_copy(update={"model": resolve(config.clip.model)}),
            "output": config.output.model_copy(update={"uri": resolve(config.output.uri)}),
        }
    )


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a YAML job spec."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}: a job spec is a mapping of sections (input, model, output, ...)"])
    return parse_spec(apply_overrides(data, overrides or []), base_dir=path.parent)
