"""The dedup phase: once a job's units are committed, its near-duplicates and the records close to a reference
set become rejected rows, unit by unit, atomically (``curation.dedup.near_duplicates`` / ``references``).

1. Reference sets are loaded first: one that cannot be read fails the phase before any unit is touched.
2. The units already decided (``dedup/units/{u}.json`` matching the unit's marker: decided by an earlier run
   of this phase, and not rewritten since) are *old*; their written records stay as they are. The others are
   *new*: only new records are compared, against every old and new one (``search.find_new_pairs``), so a
   re-run that adds units never moves a record twice, and a second run over the same output changes nothing.
3. Groups are formed (``groups.group_removals``): the record scoring highest on ``dedup.keep`` stays (ties:
   the smaller key), the others become ``near-duplicate of {key} (cosine 0.973)``; a new record within a
   reference's threshold becomes ``near-duplicate of reference {name}:{id}``.
4. Each new unit with removals is rewritten from its parquet shard (marker removed first, files written
   whole, marker last: a crash leaves it uncommitted, never half-deduplicated), then its decisions file is
   written. ``dedup/removals.parquet`` lists every removal of the output (kept key, removed key, similarity).

The summary, written after the phase, counts the rules ``near-duplicate`` and
``near-duplicate of reference {name}`` like every other rejection, so accounting still holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import records as r
from pipelines import storage
from pipelines.config import PipelineConfig
from pipelines.dedup.groups import Removal, group_removals
from pipelines.dedup.phash import phash_ints
from pipelines.dedup.references import ReferenceSet, load_reference, reference_removals
from pipelines.dedup.search import SearchConfig, find_new_pairs
from pipelines.dedup.vectors import ArrayVectors, ConcatVectors
from pipelines.writers.commit import UnitCommit, committed_units, unit_name
from pipelines.writers.formats import OutputSpec, UnitRows
from pipelines.writers.parquet_shards import PARQUET_DIR, parquet_bytes
from pipelines.writers.unit_writer import DECISIONS_DIR, commit_unit
from pipelines.writers.webdataset_shards import member_names
from unidiffuser.config import Mode

log = logging.getLogger(__name__)
NEAR_DUPLICATE_RULE = "near-duplicate"
REMOVALS_FILE = "dedup/removals.parquet"


def reference_rule(name: str) -> str:
    return f"near-duplicate of reference {name}"


@dataclass(frozen=True)
class Decision:
    """One record the phase rejected: what it duplicates (a kept record, or a reference record) and how close."""

    key: str
    reason: str
    rule: str
    similarity: float
    kept_key: str | None = None
    reference: str | None = None  # ``name:id``


@dataclass
class DedupReport:
    """What one run of the phase did."""

    units_compared: int = 0  # new units whose records were compared
    units_rewritten: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # rule -> records


@dataclass(frozen=True)
class _Records:
    """The written records of some units: keys, embeddings, ranking scores and pHashes, row-aligned."""

    keys: list[str]
    units: list[int]
    vectors: np.ndarray
    scores: list[float | None]
    phashes: list[str | None]


def run_dedup_phase(config: PipelineConfig, output: OutputSpec) -> DedupReport:
    """Run the phase over the output's committed units (see the module doc)."""
    spec = config.curation.dedup
    options = dict(output.storage_options)
    references = [load_reference(e.spec(spec.threshold), None, options) for e in spec.references]
    fs, root = storage.open_filesystem(output.uri, options)
    commits = committed_units(output.uri, options)
    settings = _settings(config)
    decided = {u for u in commits if _decided(fs, root, commits[u], settings)}
    new = sorted(set(commits) - decided)
    report = DedupReport(units_compared=len(new))
    if not new:
        return report
    column = (
        r.IMAGE_EMBEDDING
        if config.model.mode.makes_image or config.model.mode == Mode.I2T
        else r.TEXT_EMBEDDING
    )
    threshold = spec.threshold if column == r.IMAGE_EMBEDDING else spec.text_threshold
    old = _records(fs, root, sorted(decided), column, spec.keep)
    fresh = _records(fs, root, new, column, spec.keep)
    decisions = _near_duplicates(old, fresh, SearchConfig(threshold, max_hamming=spec.max_hamming))
    for removal in _contaminated(fresh, references):
        decisions.setdefault(removal.key, removal)  # a near-duplicate of the job's own record stays that
    by_unit: dict[int, dict[str, Decision]] = {}
    unit_of = dict(zip(fresh.keys, fresh.units, strict=True))
    for key, decision in decisions.items():
        by_unit.setdefault(unit_of[key], {})[key] = decision
        report.removed[decision.rule] = report.removed.get(decision.rule, 0) + 1
    for unit in new:
        removed = by_unit.get(unit, {})
        commit = commits[unit]
        if removed:
            commit = _rewrite(fs, root, commit, removed, output)
            report.units_rewritten += 1
        _write_decisions(fs, root, commit, removed, settings)
    _write_manifest(fs, root)
    log.info(
        "dedup: %d new units compared, %d rewritten, removed %s",
        len(new),
        report.units_rewritten,
        report.removed,
    )
    return report


def _decisions_path(root: str, unit: int) -> str:
    return storage.join(root, DECISIONS_DIR, f"{unit_name(unit)}.json")


def _settings(config: PipelineConfig) -> str:
    """The phase's settings: decisions taken under other ones are taken again (over the records still
    written: a record removed earlier stays removed)."""
    dedup = config.curation.dedup.model_dump(mode="json", exclude={"exact_inputs"})
    return hashlib.sha256(json.dumps(dedup, sort_keys=True).encode()).hexdigest()[:16]


def _decided(fs: AbstractFileSystem, root: str, commit: UnitCommit, settings: str) -> bool:
    """Whether the phase decided about this very unit, under these settings (its marker unchanged since)."""
    try:
        state = json.loads(storage.read_bytes(fs, _decisions_path(root, commit.unit)))
    except (FileNotFoundError, ValueError):
        return False
    return (state.get("fingerprint"), state.get("input"), state.get("written"), state.get("settings")) == (
        commit.fingerprint,
        commit.input,
        commit.written,
        settings,
    )


def _records(fs: AbstractFileSystem, root: str, units: Sequence[int], column: str, keep: str) -> _Records:
    keys: list[str] = []
    owners: list[int] = []
    vectors: list[np.ndarray] = []
    scores: list[float | None] = []
    phashes: list[str | None] = []
    for unit in units:
        path = storage.join(root, PARQUET_DIR, f"{unit_name(unit)}.parquet")
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            wanted = [c for c in (r.KEY, column, keep, r.PHASH) if c in file.schema_arrow.names]
            rows = file.read(columns=list(dict.fromkeys(wanted))).to_pylist()
        for row in rows:
            if row.get(column) is None:
                continue  # nothing to compare (a record without an image or text)
            keys.append(row[r.KEY])
            owners.append(unit)
            vectors.append(np.asarray(row[column], np.float32))
            scores.append(row.get(keep))
            phashes.append(row.get(r.PHASH))
    dim = vectors[0].shape[0] if vectors else 0
    matrix = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
    return _Records(keys, owners, matrix, scores, phashes)


def _near_duplicates(old: _Records, fresh: _Records, search: SearchConfig) -> dict[str, Decision]:
    if not len(fresh.keys):
        return {}
    hashes = None
    if search.max_hamming is not None and all(h is not None for h in old.phashes + fresh.phashes):
        hashes = phash_ints([h for h in old.phashes + fresh.phashes if h is not None])
    old_vectors, new_vectors = ArrayVectors(old.vectors), ArrayVectors(fresh.vectors)
    if not len(old.keys):
        old_vectors = ArrayVectors(np.zeros((0, fresh.vectors.shape[1]), np.float32))
    pairs = find_new_pairs(old_vectors, new_vectors, search, phashes=hashes)
    removals: list[Removal] = group_removals(
        old.keys + fresh.keys,
        old.scores + fresh.scores,
        pairs,
        ConcatVectors([old_vectors, new_vectors]),
        new_from=len(old.keys),
    )
    return {
        m.key: Decision(m.key, m.reason, NEAR_DUPLICATE_RULE, m.similarity, kept_key=m.kept_key)
        for m in removals
    }


def _contaminated(fresh: _Records, references: Sequence[ReferenceSet]) -> list[Decision]:
    if not references or not len(fresh.keys):
        return []
    found = reference_removals(fresh.keys, ArrayVectors(fresh.vectors), references)
    return [
        Decision(
            m.key,
            m.reason,
            reference_rule(m.reference),
            m.similarity,
            reference=f"{m.reference}:{m.reference_id}",
        )
        for m in found
    ]


def _read_rows(fs: AbstractFileSystem, root: str, relpath: str) -> list[dict[str, Any]]:
    path = storage.join(root, relpath)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()


def _rewrite(
    fs: AbstractFileSystem, root: str, commit: UnitCommit, removed: Mapping[str, Decision], output: OutputSpec
) -> UnitCommit:
    """The unit with ``removed`` moved from its written records to its rejected ones, recommitted."""
    name = unit_name(commit.unit)
    written = _read_rows(fs, root, f"{PARQUET_DIR}/{name}.parquet")
    rejected = _read_rows(fs, root, f"rejected/{name}.parquet")
    errored = _read_rows(fs, root, f"errors/{name}.parquet")
    kept = [row for row in written if row[r.KEY] not in removed]
    moved = [
        row | {r.STATUS: r.Status.REJECTED.value, r.REASON: removed[row[r.KEY]].reason,
               r.REJECT_RULES: [removed[row[r.KEY]].rule]}
        for row in written if row[r.KEY] in removed
    ]  # fmt: skip
    rejected += moved
    counts = UnitCommit.of(
        commit.unit,
        written=len(kept),
        rejected=[row.get(r.REJECT_RULES) or [row[r.REASON]] for row in rejected],
        errored=[row[r.REASON] for row in errored],
    )
    started, finished = _stats_times(fs, root, name)
    rows = UnitRows(commit.unit, kept, rejected, errored, counts, member_names([row[r.KEY] for row in kept]),
                    started_at=started, finished_at=finished)  # fmt: skip
    unit_output = dataclasses.replace(  # the unit keeps the identity it was written with
        output,
        fingerprint=commit.fingerprint,
        unit_inputs={commit.unit: commit.input} if commit.input is not None else {},
    )
    return commit_unit(rows, unit_output)


def _stats_times(fs: AbstractFileSystem, root: str, name: str) -> tuple[float, float]:
    try:
        stats = json.loads(storage.read_bytes(fs, storage.join(root, "stats", f"{name}_stats.json")))
        return float(stats["start_time"]), float(stats["end_time"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0.0, 0.0


def _write_decisions(
    fs: AbstractFileSystem, root: str, commit: UnitCommit, removed: Mapping[str, Decision], settings: str
) -> None:
    """The unit's decisions file: its marker, the settings, and every removal made in it so far (a record
    removed under earlier settings stays listed: it stays removed)."""
    path = _decisions_path(root, commit.unit)
    try:
        state = json.loads(storage.read_bytes(fs, path))
    except (FileNotFoundError, ValueError):
        state = {}
    same_unit = (state.get("fingerprint"), state.get("input")) == (commit.fingerprint, commit.input)
    earlier = state.get("removed", []) if same_unit else []  # a unit the pipeline rewrote starts afresh
    merged = {d["key"]: d for d in earlier} | {d.key: vars(d) for d in removed.values()}
    state = {
        "fingerprint": commit.fingerprint,
        "input": commit.input,
        "written": commit.written,
        "settings": settings,
        "removed": [merged[key] for key in sorted(merged)],
    }
    storage.write_bytes(fs, path, json.dumps(state, indent=1).encode())


def _write_manifest(fs: AbstractFileSystem, root: str) -> None:
    """``dedup/removals.parquet``: every removal the phase made in the output, from the units' decisions."""
    folder = storage.join(root, DECISIONS_DIR)
    fs.invalidate_cache(folder)
    rows = []
    for path in sorted(fs.glob(f"{folder}/*.json")):
        state = json.loads(storage.read_bytes(fs, path))
        unit = int(path.rsplit("/", 1)[1].split(".")[0])
        rows += [{"unit": unit, **d} for d in state.get("removed", [])]
    schema = pa.schema([("unit", pa.int64()), ("key", pa.string()), ("kept_key", pa.string()),
                        ("reference", pa.string()), ("similarity", pa.float64()), ("rule", pa.string()),
                        ("reason", pa.string())])  # fmt: skip
    table = pa.table(
        {f.name: pa.array([row.get(f.name) for row in rows], f.type) for f in schema}, schema=schema
    )
    storage.write_bytes(fs, storage.join(root, REMOVALS_FILE), parquet_bytes(table))
