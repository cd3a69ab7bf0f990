"""Unit commits: the marker ``_units/{unit:05d}.json``, written last, after all of a unit's files.

A marker exists only if every file of its unit was written whole, so the set of markers is exactly the set
of units a re-run may skip. Its content is one :class:`UnitCommit`: the unit's counts and reasons, its files,
the writing job's fingerprint and the unit's input hash (see ``pipelines.resume``). Beside it,
``_units/{unit:05d}.keys`` holds the 64-bit hashes of the unit's record keys (sorted), from which the summary
proves that keys are unique across the whole output.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
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


def keys_path(unit: int) -> str:
    """The relative path of ``unit``'s key hashes."""
    return f"{UNITS_DIR}/{unit_name(unit)}.keys"


@dataclass(frozen=True)
class UnitCommit:
    """What a committed unit holds: every record of it is written, rejected or errored."""

    unit: int
    records: int
    written: int
    rejected: int
    errored: int
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    fingerprint: str | None = None  # of the job that wrote it (``resume.job_fingerprint``)
    input: str | None = None  # ``Unit.input_hash`` of what it read

    @classmethod
    def of(
        cls,
        unit: int,
        *,
        written: int,
        rejected: Iterable[Iterable[str]],
        errored: Iterable[str],
        **extra: Any,
    ) -> UnitCommit:
        """A unit's commit from its written count, the rules each rejected record failed (a record failing
        two bounds counts under both) and the reasons of its errored records."""
        rejected_reasons: Counter[str] = Counter()
        n_rejected = 0
        for rules in rejected:
            rejected_reasons.update(dict.fromkeys(rules, 1))
            n_rejected += 1
        error_reasons = Counter(errored)
        return cls(
            unit=unit,
            records=written + n_rejected + error_reasons.total(),
            written=written,
            rejected=n_rejected,
            errored=error_reasons.total(),
            rejected_reasons=dict(rejected_reasons),
            error_reasons=dict(error_reasons),
            **extra,
        )

    @property
    def reasons(self) -> dict[str, int]:
        """Every reason of the unit (rejected and errored) with its count."""
        return dict(Counter(self.rejected_reasons) + Counter(self.error_reasons))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UnitCommit | None:
        """The commit a marker holds, or None for a marker that is not one (unreadable, or another layout):
        such a unit counts as not committed and is redone."""
        try:
            values = json.loads(data)
            values["files"] = tuple(values.get("files", ()))
            return cls(**values)
        except (TypeError, ValueError, AttributeError):
            return None


def write_marker(fs: AbstractFileSystem, root: str, commit: UnitCommit) -> None:
    """Commit a unit (call only after all its files are written)."""
    storage.write_bytes(fs, marker_path(root, commit.unit), commit.to_json())


def remove_marker(fs: AbstractFileSystem, root: str, unit: int) -> None:
    """Un-commit ``unit`` before rewriting its files, so a crash mid-rewrite leaves it uncommitted."""
    storage.remove_file(fs, marker_path(root, unit))


def committed_units(output_uri: str, storage_options: Mapping | None = None) -> dict[int, UnitCommit]:
    """The committed units under ``output_uri``; empty when nothing is committed yet."""
    fs, root = storage.open_filesystem(output_uri, storage_options)
    folder = storage.join(root, UNITS_DIR)
    fs.invalidate_cache(folder)
    try:
        paths = [p for p in fs.ls(folder, detail=False) if _MARKER.match(posixpath.basename(p))]
    except FileNotFoundError:
        return {}
    contents = fs.cat(paths, on_error="return") if paths else {}
    found: dict[int, UnitCommit] = {}
    for data in contents.values():
        if isinstance(data, BaseException):
            continue  # vanished between listing and reading: not committed
        commit = UnitCommit.from_json(data)
        if commit is not None:
            found[commit.unit] = commit
    return dict(sorted(found.items()))


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """Sorted 64-bit hashes of record keys (``blake2b``, 8 bytes): 8 bytes per record to prove uniqueness."""
    digests = [hashlib.blake2b(k.encode(), digest_size=8).digest() for k in keys]
    return np.sort(np.frombuffer(b"".join(digests), dtype="<u8")) if digests else np.zeros(0, "<u8")


def read_key_hashes(fs: AbstractFileSystem, root: str, units: Iterable[int]) -> dict[int, np.ndarray]:
    """The key hashes of each unit (units without a keys file are left out)."""
    paths = {storage.join(root, keys_path(u)): u for u in units}
    contents = fs.cat(list(paths), on_error="return") if paths else {}
    return {
        paths[p]: np.frombuffer(data, dtype="<u8")
        for p, data in contents.items()
        if not isinstance(data, BaseException) and p in paths
    }
