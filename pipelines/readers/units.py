"""Planned units and the Ray Data datasource that reads each unit as exactly one block.

A job's input is a sorted list of *sources* (files, or the ``count`` pseudo-source) whose record counts are
known before reading. The global order is: sources in listing order, records in file order. Units are
consecutive chunks of ``unit_size`` records of that order, numbered ``0..N-1``, so the same input and
``unit_size`` always give the same units. A unit may span several small files, and a big file may span
several units (each unit then reads only its slice, seeking via ``Source.offsets`` where the format
allows).

Each unit becomes one :class:`ray.data.ReadTask` returning one Arrow table, so one unit is one block.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines import records

# Columns a slice reader returns: the reader schema without ``unit`` (the datasource adds it).
SLICE_SCHEMA = pa.schema([f for f in records.READER_SCHEMA if f.name != records.UNIT])

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Source:
    """One input file (or pseudo-source) and what planning learned about it."""

    uri: str  # full URI, written to each record's ``source`` column
    path: str  # path on its filesystem (protocol stripped)
    name: str  # job-unique name used to build keys (see ``unique_names``)
    kind: str  # format tag the reader dispatches on ("txt", "jsonl", "tar", "image", ...)
    num_records: int
    offsets: tuple[int, ...] = ()  # byte offset of record ``i * stride`` (seekable formats), else empty
    stride: int = 0
    error: str | None = None  # a damaged source: its last record is an error record with this reason
    key_prefix: str = ""  # readers whose records carry their own keys (webdataset) prefix them with this
    index_keys: bool = False  # ... and append the record index when the source's own keys repeat
    sidecars: tuple[tuple[str, str], ...] = ()  # (extension, path) of files that describe this one
    stamp: str = ""  # size and version of the file(s) read at planning (see ``storage.ListedFile.stamp``)

    def sidecar(self, ext: str) -> str | None:
        """The path of the ``ext`` sidecar (e.g. ``txt``, ``json``), or None."""
        return next((path for e, path in self.sidecars if e == ext), None)

    def seek_point(self, start: int) -> tuple[int, int]:
        """The (record index, byte offset) of the nearest checkpoint at or before record ``start``."""
        if not self.offsets or self.stride <= 0:
            return 0, 0
        slot = min(start // self.stride, len(self.offsets) - 1)
        return slot * self.stride, self.offsets[slot]


@dataclass(frozen=True)
class Segment:
    """Records ``[start, stop)`` of one source."""

    source: Source
    start: int
    stop: int

    @property
    def num_records(self) -> int:
        """Records in the segment."""
        return self.stop - self.start


@dataclass(frozen=True)
class Unit:
    """One output shard's worth of input: consecutive segments of the global record order."""

    index: int
    segments: tuple[Segment, ...]

    @property
    def num_records(self) -> int:
        """Records in the unit."""
        return sum(s.num_records for s in self.segments)

    @property
    def input_hash(self) -> str:
        """A hash of what the unit reads: each segment's file (URI and stamp), record range and key naming.

        A committed unit is reused only while this is unchanged, so a re-run over a grown or rewritten
        input redoes the units whose records moved or changed, even where their record counts did not.
        """
        parts = [
            [
                s.source.uri,
                s.source.stamp,
                s.source.name,
                s.source.key_prefix,
                s.source.index_keys,
                s.start,
                s.stop,
            ]
            for s in self.segments
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class SliceReader(Protocol):
    """Reads records ``[start, stop)`` of a source into a table with ``SLICE_SCHEMA`` columns.

    It must return exactly ``stop - start`` rows; a record it cannot read is a row with ``read_error``
    set, never a missing row. Implementations must be picklable (they run inside Ray read tasks).
    """

    def __call__(self, source: Source, start: int, stop: int) -> pa.Table: ...


def plan_units(sources: Sequence[Source], unit_size: int) -> tuple[Unit, ...]:
    """Chunk the global record order of ``sources`` into units of ``unit_size`` records (last may be short)."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    units: list[Unit] = []
    pending: list[Segment] = []
    room = unit_size
    for source in sources:
        start = 0
        while start < source.num_records:
            take = min(room, source.num_records - start)
            pending.append(Segment(source, start, start + take))
            start += take
            room -= take
            if room == 0:
                units.append(Unit(len(units), tuple(pending)))
                pending, room = [], unit_size
    if pending:
        units.append(Unit(len(units), tuple(pending)))
    return tuple(units)


@dataclass(frozen=True)
class PlannedInput:
    """A job's input with its units planned: counts are known without reading any record."""

    units: tuple[Unit, ...]
    reader: SliceReader = field(repr=False)

    @property
    def num_records(self) -> int:
        """Input records of the whole job (every one ends written, rejected or errored)."""
        return sum(u.num_records for u in self.units)

    @property
    def num_units(self) -> int:
        """Units of the whole job (ids ``0..num_units-1``)."""
        return len(self.units)

    def records_in(self, unit_ids: Iterable[int]) -> int:
        """How many records the given units hold (e.g. the already-committed ones on resume)."""
        wanted = set(unit_ids)
        return sum(u.num_records for u in self.units if u.index in wanted)

    def to_dataset(
        self,
        skip_units: frozenset[int] = frozenset(),
        *,
        num_cpus: float | None = None,
        memory: int | None = None,
    ) -> ray.data.Dataset:
        """A dataset with one read task (one block) per unit not in ``skip_units``; ``num_cpus`` and
        ``memory`` are reserved for each read task.

        ``override_num_blocks`` is pinned to the number of units so Ray Data never adds a split factor
        to the read, and the dataset's own context has ``target_max_block_size=None`` so a large unit is
        not sliced into several blocks (see ``UnitDatasource``).
        """
        units = tuple(u for u in self.units if u.index not in skip_units)
        ds = ray.data.read_datasource(
            UnitDatasource(units, self.reader),
            override_num_blocks=max(1, len(units)),
            num_cpus=num_cpus,
            memory=memory,
        )
        ds.context.target_max_block_size = None
        return ds


class UnitDatasource(Datasource):
    """A Ray Data datasource with exactly one read task, returning one block, per planned unit.

    Two Ray Data behaviours would otherwise split a unit's block (ray 2.60 source):
    ``SetReadParallelismRule`` splits each read task's output into ``k`` blocks when there are fewer read
    tasks than the requested parallelism (avoided by ``override_num_blocks=len(units)`` and by not
    reporting a size estimate), and the read's ``BlockOutputBuffer`` slices any block larger than
    1.5 x ``DataContext.target_max_block_size`` (avoided by setting it to ``None`` on the dataset).
    """

    def __init__(self, units: Sequence[Unit], reader: SliceReader):
        super().__init__()
        self._units = tuple(units)
        self._reader = reader

    def get_name(self) -> str:
        return "Units"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        """One read task per unit, whatever ``parallelism`` asks for."""
        return [
            ReadTask(
                functools.partial(read_unit, unit, self._reader),
                BlockMetadata(
                    num_rows=unit.num_records,
                    size_bytes=None,
                    input_files=tuple(dict.fromkeys(s.source.uri for s in unit.segments)),
                    exec_stats=None,
                ),
                schema=records.READER_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )
            for unit in self._units
        ]


def read_unit(unit: Unit, reader: SliceReader, *, max_threads: int = 16) -> list[pa.Table]:
    """Read one unit into a single ``READER_SCHEMA`` table (a list of one, as a ReadTask returns).

    Segments are read by a small thread pool (reads are I/O bound: a unit of loose image files on S3 is
    hundreds of GETs) and concatenated in unit order.
    """
    read = functools.partial(_read_segment, reader=reader)
    if len(unit.segments) > 1 and max_threads > 1:
        with ThreadPoolExecutor(min(max_threads, len(unit.segments))) as pool:
            tables = list(pool.map(read, unit.segments))
    else:
        tables = [read(segment) for segment in unit.segments]
    table = pa.concat_tables(tables) if tables else SLICE_SCHEMA.empty_table()
    table = table.append_column(
        pa.field(records.UNIT, pa.int64(), nullable=False),
        pa.array([unit.index] * table.num_rows, pa.int64()),
    )
    return [table.select(records.READER_SCHEMA.names).cast(records.READER_SCHEMA)]


def _read_segment(segment: Segment, reader: SliceReader) -> pa.Table:
    try:
        table = reader(segment.source, segment.start, segment.stop)
        if table.num_rows != segment.num_records:
            raise RuntimeError(
                f"reader returned {table.num_rows} records for {segment.num_records} planned "
                "(did the file change since planning?)"
            )
        return table.select(SLICE_SCHEMA.names).cast(SLICE_SCHEMA)
    except Exception as exc:  # a source that cannot be read is error records, never a crashed job
        keys = [f"{segment.source.name}-{i:09d}" for i in range(segment.start, segment.stop)]
        return slice_table(keys, segment.source.uri, errors=f"read failed: {type(exc).__name__}: {exc}")


def slice_table(
    keys: Sequence[str],
    source_uri: str,
    *,
    prompts: Sequence[str | None] | None = None,
    images: Sequence[bytes | None] | None = None,
    errors: Sequence[str | None] | str | None = None,
    metadata: Sequence[str | None] | None = None,
) -> pa.Table:
    """Build a ``SLICE_SCHEMA`` table; a plain string for ``errors`` applies to every row."""
    n = len(keys)
    if isinstance(errors, str):
        errors = [errors] * n
    columns = {
        records.KEY: pa.array(keys, pa.string()),
        records.SOURCE: pa.array([source_uri] * n, pa.string()),
        records.PROMPT: pa.array(prompts if prompts is not None else [None] * n, pa.string()),
        records.IMAGE_BYTES: pa.array(images if images is not None else [None] * n, pa.binary()),
        records.READ_ERROR: pa.array(errors if errors is not None else [None] * n, pa.string()),
        records.METADATA: pa.array(metadata if metadata is not None else [None] * n, pa.string()),
    }
    return pa.table(columns, schema=SLICE_SCHEMA)


def read_parquet_slice(pf: pq.ParquetFile, columns: Sequence[str], start: int, stop: int) -> pa.Table:
    """Rows ``[start, stop)`` of ``columns``, reading only the row groups that overlap them."""
    groups, first, row = [], None, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if row < stop and row + n > start:
            groups.append(i)
            first = row if first is None else first
        row += n
    table = pf.read_row_groups(groups, columns=list(columns))
    return table.slice(start - (first or 0), stop - start)


def unique_names(relpaths: Sequence[str], *, use_stem: bool = True) -> list[str]:
    """Job-unique, stable names for files, used to build record keys.

    Each file gets the first of these that no other file in the listing shares: its stem (if
    ``use_stem``), its relative path without extension, its relative path. Relative paths are unique
    within a listing, so the last always is. Names only change when a colliding file is added.
    """
    candidates: list[Callable[[str], str]] = [lambda p: posixpath.splitext(p)[0], lambda p: p]
    if use_stem:
        candidates.insert(0, lambda p: posixpath.splitext(posixpath.basename(p))[0])
    names: list[str | None] = [None] * len(relpaths)
    pending = list(range(len(relpaths)))
    for make in candidates:
        proposed = {i: make(relpaths[i]) for i in pending}
        counts: dict[str, int] = {}
        for name in proposed.values():
            counts[name] = counts.get(name, 0) + 1
        taken = {n for n in names if n is not None}
        still = []
        for i in pending:
            if counts[proposed[i]] == 1 and proposed[i] not in taken:
                names[i] = proposed[i]
            else:
                still.append(i)
        pending = still
    for i in pending:  # only reachable with duplicate relpaths
        names[i] = f"{relpaths[i]}-{i}"
    return [n for n in names if n is not None]


def map_in_tasks(
    fn: Callable[[T], R], items: Sequence[T], *, max_tasks: int = 1000, **remote_args: Any
) -> list[R]:
    """``[fn(x) for x in items]`` in parallel Ray tasks (at most ``max_tasks``, items batched evenly).

    A single item runs in the caller: planning one file needs no task.
    """
    if len(items) <= 1:
        return [fn(x) for x in items]
    per_task = -(-len(items) // max_tasks)
    batches = [list(items[i : i + per_task]) for i in range(0, len(items), per_task)]
    remote = ray.remote(**({"num_cpus": 1} | remote_args))(_call_each)
    return [result for batch in ray.get([remote.remote(fn, b) for b in batches]) for result in batch]


def _call_each(fn: Callable[[T], R], items: list[T]) -> list[R]:
    return [fn(x) for x in items]
