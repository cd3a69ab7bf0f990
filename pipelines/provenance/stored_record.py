"""One record of a finished job's output, found by its key: the row as written, where it ended (written,
rejected or errored), the job's summary (its config, model versions and fingerprint) and the generation record
its image carries. What ``regenerate`` rebuilds a record from.

    stored = find_record("s3://bucket/out", "prompts-000003_0", storage_options)
    stored.outcome, stored.row["seed"], stored.marks.model_version

The unit is found from the key hashes each commit writes (``_units/{u}.keys``), so only that unit's parquet
files are read, whatever the size of the output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import records as r
from pipelines import storage
from pipelines.writers.commit import committed_units, key_hashes, read_key_hashes, unit_name
from pipelines.writers.outcomes import ERRORS_DIR, REJECTED_DIR
from pipelines.writers.parquet_shards import PARQUET_DIR
from pipelines.writers.summary import SUMMARY_FILE
from unidiffuser.locations import redact
from unidiffuser.marks.marking import read_marks
from unidiffuser.marks.record import GenerationRecord

OUTCOME_FOLDERS = {"written": PARQUET_DIR, "rejected": REJECTED_DIR, "errored": ERRORS_DIR}
"""Where each outcome's rows are, by outcome."""


class RecordLookupError(LookupError):
    """The output or the record cannot be read: the message names the output and the key."""


@dataclass(frozen=True)
class StoredRecord:
    """One record as its job wrote it."""

    key: str
    outcome: str  # "written", "rejected" or "errored" (OUTCOME_FOLDERS)
    unit: int
    row: Mapping[str, Any]  # the parquet row, by column name
    summary: Mapping[str, Any]  # the job's _summary.json
    marks: GenerationRecord | None  # the generation record in the row's image, None without one
    marks_problem: str | None = None  # why the image's marks could not be read, if they could not
    unit_input: str | None = None  # the input hash the unit's marker recorded (``Unit.input_hash``)

    @property
    def config(self) -> Mapping[str, Any]:
        """The job's spec as the summary keeps it (secrets removed)."""
        config: Mapping[str, Any] = self.summary.get("config") or {}
        return config


def find_record(output_uri: str, key: str, storage_options: Mapping[str, Any] | None = None) -> StoredRecord:
    """The record ``key`` of the finished job at ``output_uri``; RecordLookupError when the job has no summary
    or no record of that key."""
    fs, root = storage.open_filesystem(output_uri, storage_options)
    root = root.rstrip("/")
    summary = _summary(fs, root, output_uri)
    commits = committed_units(output_uri, storage_options)
    for unit in _units_holding(fs, root, list(commits), key):
        for outcome, folder in OUTCOME_FOLDERS.items():
            row = _row(fs, storage.join(root, folder, f"{unit_name(unit)}.parquet"), key)
            if row is not None:
                marks, problem = _marks(row)
                return StoredRecord(key, outcome, unit, row, summary, marks, problem, commits[unit].input)
    formats = (summary.get("config") or {}).get("output", {}).get("formats", [])
    hint = "" if PARQUET_DIR in formats else f"; this job wrote no {PARQUET_DIR}/ shards (output.formats)"
    raise RecordLookupError(
        f"no record {key!r} in {redact(output_uri)} (looked in {', '.join(OUTCOME_FOLDERS.values())}){hint}"
    )


def _summary(fs: AbstractFileSystem, root: str, output_uri: str) -> dict[str, Any]:
    path = storage.join(root, SUMMARY_FILE)
    try:
        summary: dict[str, Any] = json.loads(storage.read_bytes(fs, path))
    except FileNotFoundError:
        raise RecordLookupError(
            f"no {SUMMARY_FILE} under {redact(output_uri)}: is the job finished?"
        ) from None
    except json.JSONDecodeError as error:
        raise RecordLookupError(f"{redact(output_uri)}/{SUMMARY_FILE} is not JSON: {error}") from None
    return summary


def _units_holding(fs: AbstractFileSystem, root: str, units: list[int], key: str) -> list[int]:
    """The committed ``units`` whose key hashes hold ``key`` (every one lacking a keys file too)."""
    hashes = read_key_hashes(fs, root, units)
    wanted = key_hashes([key])[0]
    return [u for u in units if u not in hashes or wanted in hashes[u]]


def _row(fs: AbstractFileSystem, path: str, key: str) -> dict[str, Any] | None:
    """The row of ``key`` in the parquet file at ``path``, None when the file or the row is not there."""
    try:
        with fs.open(path, "rb") as file:
            rows = pq.read_table(file, filters=[(r.KEY, "==", key)]).to_pylist()
    except FileNotFoundError:
        return None
    return rows[0] if rows else None


def _marks(row: Mapping[str, Any]) -> tuple[GenerationRecord | None, str | None]:
    data = row.get(r.IMAGE)
    if data is None:
        return None, None
    try:
        marks = read_marks(data)
    except ValueError as error:
        return None, f"its image's marks cannot be read: {error}"
    return (None, None) if marks is None else (marks.record, None)
