"""The unit model: sources, segments and units, and a job's planned input.

A job's input is a sorted list of *sources* (files, or the ``count`` pseudo-source) whose record counts are
known before reading. The global order is: sources in listing order, records in file order. Units are
consecutive chunks of ``unit_size`` records of that order, numbered ``0..N-1``, so the same input and
``unit_size`` always give the same units. A unit may span several small files, and a big file may span
several units (each unit then reads only its slice, seeking via ``Source.offsets`` where the format
allows). Each source names its :class:`~pipelines.readers.formats.InputFormat`, which counts and reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ray.data

    from pipelines.readers.formats import InputFormat


@dataclass(frozen=True)
class ReadOptions:
    """How a job reads its sources (the ``input`` and ``storage`` sections, as the formats need them)."""

    storage_options: Mapping[str, Any] = field(default_factory=dict)
    field: str | None = None  # the prompt field / column, or the image column
    caption_field: str | None = None  # image inputs: the caption column of parquet files
    keep_fields: tuple[str, ...] = ()  # ``input.keep_fields``


@dataclass(frozen=True)
class Source:
    """One input file (or pseudo-source) and what planning learned about it."""

    uri: str  # full URI, written to each record's ``source`` column
    path: str  # path on its filesystem (protocol stripped)
    name: str  # job-unique name used to build keys (see ``naming.unique_names``)
    format: InputFormat  # how it is counted and read
    num_records: int
    offsets: tuple[int, ...] = ()  # byte offset of record ``i * stride`` (seekable formats), else empty
    stride: int = 0
    error: str | None = None  # a damaged source: its last record is an error record with this reason
    key_prefix: str = ""  # readers whose records carry their own keys (webdataset) prefix them with this
    index_keys: bool = False  # ... and append the record index when the source's own keys repeat
    sidecars: tuple[tuple[str, str], ...] = ()  # (extension, path) of files that describe this one
    stamp: str = ""  # size and version of the file(s) read at planning (see ``storage.ListedFile.stamp``)
    size: int | None = None  # bytes, as listed (bounded reads need no extra request to learn it)
    planned_from: str = (
        ""  # what the count came from when not the file itself (a metadata file), for messages
    )
    excluded: tuple[
        tuple[str, int], ...
    ] = ()  # (reason, n): entries the source's metadata lists, not records

    def sidecar(self, ext: str) -> str | None:
        """The path of the ``ext`` sidecar (e.g. ``txt``, ``json``), or None."""
        return next((path for e, path in self.sidecars if e == ext), None)

    def seek_point(self, start: int) -> tuple[int, int]:
        """The (record index, byte offset) of the nearest checkpoint at or before record ``start``."""
        if not self.offsets or self.stride <= 0:
            return 0, 0
        slot = min(start // self.stride, len(self.offsets) - 1)
        return slot * self.stride, self.offsets[slot]

    def planned_keys(self, start: int, stop: int) -> list[str]:
        """The keys records ``[start, stop)`` have, as far as planning knows them (see the formats)."""
        return self.format.planned_keys(self, start, stop)


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


def excluded_entries(sources: Iterable[Source]) -> dict[str, int]:
    """The sources' ``excluded`` entries summed by reason."""
    counts: dict[str, int] = {}
    for source in sources:
        for reason, n in source.excluded:
            counts[reason] = counts.get(reason, 0) + n
    return dict(sorted(counts.items()))


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
    options: ReadOptions = field(repr=False, default_factory=ReadOptions)
    excluded: Mapping[str, int] = field(default_factory=dict)
    """Entries the inputs' metadata lists that are not records, by reason (img2dataset's failed downloads:
    absent from its tars and folders, rows without an image in its parquet layout); reported beside the
    job's counts so that nothing is dropped silently (see ``excluded_entries``)."""

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
        """A dataset with one read task (one block) per unit not in ``skip_units`` (see
        ``datasource.unit_dataset``); ``num_cpus`` and ``memory`` are reserved for each read task."""
        from pipelines.readers.datasource import unit_dataset

        units = tuple(u for u in self.units if u.index not in skip_units)
        return unit_dataset(units, self.options, num_cpus=num_cpus, memory=memory)
