"""Unit commit markers: ``_units/{unit:05d}.json``, written last, after all of a unit's files.

A marker exists only if every file of its unit was written whole, so the set of markers is exactly the set
of units a re-run may skip. Its content is the unit's counts (records, written, rejected, errored, reasons),
its files, the writing job's output fingerprint and the unit's input hash (see ``pipelines.resume``).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem

from pipelines import storage

UNITS_DIR = "_units"
_MARKER = re.compile(r"^(\d+)\.json$")


def unit_name(unit: int) -> str:
    """The zero-padded name shared by all of a unit's files."""
    return f"{unit:05d}"


def marker_path(root: str, unit: int) -> str:
    """Where ``unit``'s commit marker lives under the output root."""
    return storage.join(root, UNITS_DIR, f"{unit_name(unit)}.json")


def write_marker(fs: AbstractFileSystem, root: str, unit: int, counts: Mapping[str, Any]) -> None:
    """Commit ``unit`` (call only after all its files are written)."""
    storage.write_bytes(
        fs, marker_path(root, unit), json.dumps(dict(counts), indent=1, sort_keys=True).encode()
    )


def remove_marker(fs: AbstractFileSystem, root: str, unit: int) -> None:
    """Un-commit ``unit`` before rewriting its files, so a crash mid-rewrite leaves it uncommitted."""
    storage.remove_file(fs, marker_path(root, unit))


def committed_units(output_uri: str, storage_options: Mapping | None = None) -> dict[int, dict]:
    """The committed units under ``output_uri`` and their counts; empty when nothing is committed yet."""
    fs, root = storage.open_filesystem(output_uri, storage_options)
    folder = storage.join(root, UNITS_DIR)
    fs.invalidate_cache(folder)
    try:
        paths = [p for p in fs.ls(folder, detail=False) if _MARKER.match(posixpath.basename(p))]
    except FileNotFoundError:
        return {}
    contents = fs.cat(paths, on_error="return") if paths else {}
    found: dict[int, dict] = {}
    for path, data in contents.items():
        if isinstance(data, BaseException):
            continue  # vanished between listing and reading: not committed
        match = _MARKER.match(posixpath.basename(path))
        if match is None:
            continue
        try:
            found[int(match.group(1))] = json.loads(data)
        except json.JSONDecodeError:
            continue  # cannot happen with whole-file writes; treat as not committed
    return dict(sorted(found.items()))
