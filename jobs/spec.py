"""Job specs: YAML files validated by ``pipelines.config.PipelineConfig``, with ``--set key=value`` overrides.

Every problem is reported at once with its key path, e.g. ``model.steps: Input should be greater than or
equal to 1``. A key given twice in a YAML mapping is an error naming the key and both lines. Relative local
paths in a spec file are resolved against the spec's folder; relative local paths given with ``--set`` are
resolved against the current folder (the fields that hold locations are marked ``Location`` in the model).
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config import InputKind, PipelineConfig, input_kind
from pipelines.spec_fields import IsLocation
from unidiffuser.config import Mode
from unidiffuser.locations import is_local


class SpecError(ValueError):
    """A job spec that cannot be used; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice (the plain loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, origin: str) -> dict[str, Any]:
    """A spec file's mapping; SpecError for invalid YAML, a repeated key, or anything but a mapping."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise SpecError([f"{origin}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{origin}: a job spec is a mapping of sections (input, model, output, ...)"])
    return data


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


def resolve_locations(data: dict[str, Any], base_dir: Path, model: type[BaseModel] = PipelineConfig) -> None:
    """Resolve, in place, every relative local path held by a ``Location`` field of ``model`` in ``data``
    (nested sections and lists of sections included) against ``base_dir``; URIs are left alone."""
    for name, field in model.model_fields.items():
        value = data.get(name)
        if value is None:
            continue
        marked = any(isinstance(meta, IsLocation) for meta in field.metadata)
        if (marked or _holds_location(field.annotation)) and isinstance(value, str):
            data[name] = _resolved(value, base_dir)
        section = _section_model(field.annotation)
        if section is not None and isinstance(value, dict):
            resolve_locations(value, base_dir, section)
        elif section is not None and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    resolve_locations(item, base_dir, section)


def _resolved(location: str, base_dir: Path) -> str:
    if (
        not is_local(location)
        or location.startswith("file://")
        or os.path.isabs(os.path.expanduser(location))
    ):
        return location
    return str((base_dir / location).resolve())


def _holds_location(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(meta, IsLocation) for meta in typing.get_args(annotation)[1:])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_holds_location(arg) for arg in typing.get_args(annotation))
    return False


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (itself, optional, or a list of them), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _merge(base: dict[str, Any], overrides: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``overrides`` laid over ``base``: sections merge, every other value replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        here = f"{path}{key}"
        if isinstance(value, dict) and key in merged:
            if not isinstance(merged[key], dict):
                raise SpecError([f"--set {here}.{next(iter(value), '')}: {here} is not a section"])
            merged[key] = _merge(merged[key], value, f"{here}.")
        else:
            merged[key] = value
    return merged


def _format(err: Any) -> str:
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
        wanted = input_kind(mode)
    except (ValueError, KeyError):
        return []
    kind = source.get("kind")
    if kind not in set(InputKind) or kind == wanted:
        return []
    return [f"spec: model.mode {mode.value!r} needs input.kind {wanted.value!r}, got {kind!r}"]


def parse_spec(data: dict[str, Any], *, base_dir: Path | None = None) -> PipelineConfig:
    """Validate a spec dict; relative local paths are resolved against ``base_dir`` when given."""
    if base_dir is not None:
        resolve_locations(data, base_dir)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_format(err) for err in exc.errors()]
        raise SpecError(problems + [p for p in _cross_section_problems(data) if p not in problems]) from None


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a YAML job spec: paths in the file are relative to its folder, paths in
    ``overrides`` (``--set``) to the current folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file not found: {path}"])
    data = parse_yaml(path.read_text(), str(path))
    resolve_locations(data, path.parent.resolve())
    given = apply_overrides({}, overrides or [])
    resolve_locations(given, Path.cwd())
    return parse_spec(_merge(data, given))
