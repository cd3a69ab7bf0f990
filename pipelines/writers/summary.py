"""``_summary.json``: a job's totals aggregated from its unit commit markers, checked for exact accounting.

Every record (each of ``samples_per_input`` samples of each input) ends as exactly one of written, rejected or
errored; ``write_summary`` raises ``AccountingError`` (and writes nothing) when the committed units do not add
up to the job's records.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import storage
from pipelines.writers.commit import UnitCommit, committed_units, keys_path, read_key_hashes
from unidiffuser.locations import redact as redact_uri

SUMMARY_FILE = "_summary.json"
SECRET_WORDS = frozenset(
    {"key", "keys", "secret", "secrets", "token", "password", "passwd", "credential", "credentials", "auth"}
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


class AccountingError(RuntimeError):
    """The committed units do not account for every input record."""


def is_secret(name: str) -> bool:
    """Whether a config key names a secret: one of its words (split on ``_ - .`` and camelCase) is in
    ``SECRET_WORDS``. This over-removes (``key_column`` too) on purpose: the summary is a report."""
    return any(word.lower() in SECRET_WORDS for word in _WORD.findall(str(name)))


def redact(config: Any) -> Any:
    """``config`` with secret keys removed at any depth and ``user:password@`` stripped from URLs."""
    if isinstance(config, Mapping):
        return {k: redact(v) for k, v in config.items() if not is_secret(k)}
    if isinstance(config, (list, tuple)):
        return [redact(v) for v in config]
    if isinstance(config, str):
        return redact_uri(config)
    return config


def summarize(
    commits: Mapping[int, UnitCommit], *, inputs: int, samples_per_input: int = 1
) -> dict[str, Any]:
    """Totals over unit commits; raises AccountingError unless the records (inputs x samples_per_input)
    equal written + rejected + errored."""
    records = inputs * samples_per_input
    totals = {name: sum(getattr(c, name) for c in commits.values()) for name in _COUNTS}
    rejected_reasons: Counter[str] = Counter()
    error_reasons: Counter[str] = Counter()
    for c in commits.values():
        rejected_reasons.update(c.rejected_reasons)
        error_reasons.update(c.error_reasons)
    outcomes = totals["written"] + totals["rejected"] + totals["errored"]
    if outcomes != records or totals["records"] != records:
        expected = f"{inputs} inputs"
        if samples_per_input > 1:
            expected = f"{records} records ({inputs} inputs x {samples_per_input} samples)"
        raise AccountingError(
            f"records are not accounted for: {expected} but {totals['written']} written + {totals['rejected']} rejected + "
            f"{totals['errored']} errored = {outcomes} over {len(commits)} committed units (which hold "
            f"{totals['records']} records); resume the job to finish its remaining units"
        )
    return {
        "inputs": inputs,
        "samples_per_input": samples_per_input,
        "records": records,
        **{name: totals[name] for name in _COUNTS if name != "records"},
        "units": len(commits),
        "rejected_reasons": _top(rejected_reasons),
        "error_reasons": _top(error_reasons),
    }


_COUNTS = ("records", "written", "rejected", "errored")
MAX_REASONS = 100
"""Reasons listed by name in a summary; the rest are counted together (error reasons that name files are
many on a large corpus)."""


def _top(counts: Counter[str]) -> dict[str, int]:
    """The ``MAX_REASONS`` most common reasons, most common first, and the others under one entry."""
    top = dict(counts.most_common(MAX_REASONS))
    rest = counts.total() - sum(top.values())
    return top | ({f"({len(counts) - len(top)} other reasons)": rest} if rest else {})


def check_unique_keys(fs: AbstractFileSystem, root: str, commits: Mapping[int, UnitCommit]) -> None:
    """Raise AccountingError unless every record key of the output is unique, across written, rejected and
    errored rows of every unit (from each unit's key hashes; a shared hash is confirmed on the keys)."""
    hashes = read_key_hashes(fs, root, commits)
    missing = sorted(set(commits) - set(hashes))
    if missing:
        raise AccountingError(f"units {missing} have no key hashes ({keys_path(missing[0])}): redo them")
    if not hashes:
        return
    units = np.concatenate([np.full(len(h), u) for u, h in hashes.items()])
    values = np.concatenate(list(hashes.values()))
    order = np.argsort(values, kind="stable")
    values, units = values[order], units[order]
    repeated = np.flatnonzero(values[1:] == values[:-1])
    if repeated.size == 0:
        return
    involved = sorted({int(u) for i in repeated for u in (units[i], units[i + 1])})
    shared = _shared_keys(fs, root, [commits[u] for u in involved])
    detail = f"key {shared[0]!r}" if shared else "a key hash"
    raise AccountingError(
        f"record keys are not unique: {detail} appears more than once across units {involved}"
        f"{f' ({len(shared)} keys in all)' if len(shared) > 1 else ''}"
    )


def _shared_keys(fs: AbstractFileSystem, root: str, commits: list[UnitCommit]) -> list[str]:
    """Keys that appear more than once in the parquet files of ``commits`` (shards, rejected, errors)."""
    seen: Counter[str] = Counter()
    for c in commits:
        for relpath in c.files:
            if relpath.endswith(".parquet") and not relpath.startswith("embeddings/"):
                with fs.open(storage.join(root, relpath), "rb") as f:
                    seen.update(pq.read_table(f, columns=["key"]).column("key").to_pylist())
    return sorted(k for k, n in seen.items() if n > 1)


def outcome_line(summary: Mapping[str, Any]) -> str:
    """``12 inputs -> 10 written, 1 rejected, 1 errored`` (with ``x 4 samples = 48 records`` when several)."""
    samples = summary.get("samples_per_input", 1)
    drawn = f" x {samples} samples = {summary['records']} records" if samples > 1 else ""
    return (
        f"{summary['inputs']} inputs{drawn} -> {summary['written']} written, {summary['rejected']} rejected, "
        f"{summary['errored']} errored"
    )


@dataclass(frozen=True)
class RunWork:
    """What one run of a job did: its wall time and the units and records it generated (skipped units are
    not work: a resumed run's rate counts only what it made)."""

    wall_time_s: float
    units_run: int
    records_run: int

    def to_dict(self) -> dict[str, Any]:
        rate = self.records_run / self.wall_time_s if self.records_run and self.wall_time_s > 0 else None
        return {
            "wall_time_s": round(self.wall_time_s, 3),
            "units_run": self.units_run,
            "records_run": self.records_run,
            "records_per_s": None if rate is None else round(rate, 3),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def write_summary(
    output_uri: str,
    *,
    inputs: int,
    samples_per_input: int = 1,
    config: Mapping[str, Any],
    run: RunWork,
    versions: Mapping[str, str],
    storage_options: Mapping | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate all unit commits under ``output_uri`` into ``_summary.json`` and return it.

    The job's totals are checked (every record accounted for, every key unique: AccountingError, writing
    nothing, otherwise). ``run`` is this run's own work; ``last_work_run`` is the latest run that generated
    anything (a no-op re-run keeps the previous one). ``config`` is written with secrets removed.
    """
    commits = committed_units(output_uri, storage_options)
    summary = summarize(commits, inputs=inputs, samples_per_input=samples_per_input)
    fs, root = storage.open_filesystem(output_uri, storage_options)
    check_unique_keys(fs, root, commits)
    this_run = run.to_dict()
    last_work = this_run if run.units_run else _previous(fs, root).get("last_work_run")
    summary |= {
        "run": this_run,
        "last_work_run": last_work,
        "versions": dict(versions),
        "config": redact(dict(config)),
        **dict(extra or {}),
    }
    data = json.dumps(summary, indent=2, sort_keys=False, default=str).encode("utf-8")
    storage.write_bytes(fs, storage.join(root, SUMMARY_FILE), data)
    return summary


def _previous(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
    """The summary an earlier run wrote, or {}."""
    try:
        previous = json.loads(storage.read_bytes(fs, storage.join(root, SUMMARY_FILE)))
    except (FileNotFoundError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}
