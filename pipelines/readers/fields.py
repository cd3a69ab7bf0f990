"""What travels with an input record besides its prompt or image: a caption file's text, and the
``input.keep_fields`` fields, carried to all its outputs as one JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def kept_fields(fields: Mapping | None, keep: Sequence[str]) -> str:
    """The ``keep`` fields of one input record as a JSON object (a field it lacks is null)."""
    fields = fields or {}
    return json.dumps({name: fields.get(name) for name in keep}, ensure_ascii=False, default=str)


def json_object(data: bytes | None) -> Mapping[str, Any] | None:
    """A sidecar's bytes parsed as a JSON object, or None when absent, not JSON or not an object."""
    if not data:
        return None
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def caption_text(data: bytes) -> str:
    """A ``.txt`` caption: UTF-8 (undecodable bytes replaced), without a BOM or a final line break."""
    text = data.decode("utf-8-sig", errors="replace")
    return text[:-1].removesuffix("\r") if text.endswith("\n") else text
