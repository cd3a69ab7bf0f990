"""The job spec reference in Markdown, generated from the typed model (README embeds it; a test checks it)."""

from __future__ import annotations

import typing
from enum import Enum

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipelines.config import PipelineConfig
from unidiffuser.config import Mode

START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args) + " (optional)"
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see section"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`" if value is not None else "—"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def _model_of(annotation: object) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds (itself, in a list, or optional) and the key suffix of its items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args:
        model, _ = _model_of(args[0])
        return model, "[]"
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1 and type(None) in args:
        return models[0], ""
    return None, ""


def _rows(prefix: str, model: type[BaseModel]) -> list[str]:
    """The rows of ``model``'s fields under ``prefix``, nested sections (and lists of them) expanded."""
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested, items = _model_of(field.annotation)
        if nested is not None:
            kind = f"list of {nested.__name__}" if items else "section"
            meaning = field.description or (nested.__doc__ or "").strip().splitlines()[0]
            lines.append(f"| `{key}` | {kind} | {_default(field)} | {_cell(meaning)} |")
            lines += _rows(f"{key}{items}.", nested)
            continue
        kind = "see meaning" if field.annotation is Mode else _type_name(field.annotation)
        lines.append(f"| `{key}` | {kind} | {_default(field)} | {_cell(field.description)} |")
    return lines


def spec_reference() -> str:
    """One table of ``PipelineConfig``'s keys (nested sections and list items expanded): key, type, default,
    meaning."""
    lines = [START, "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    sections = []
    for name, field in PipelineConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation))
            continue
        lines.append(
            f"| `{name}` | {_type_name(annotation)} | {_default(field)} | {_cell(field.description)} |"
        )
    for section, model in sections:
        required = PipelineConfig.model_fields[section].is_required()
        lines.append(f"| **`{section}`** | section | {'**required**' if required else 'optional'} | "
                     f"{(model.__doc__ or '').strip().splitlines()[0]} |")  # fmt: skip
        lines += _rows(f"{section}.", model)
    return "\n".join([*lines, "", END])


if __name__ == "__main__":
    print(spec_reference())
