"""Input formats: one class per format, each knowing how to count a source at planning and read a slice.

Ray Data keeps one datasource class per format; here each format is a small frozen dataclass behind
:class:`InputFormat`, named by the :class:`~pipelines.readers.plan.Source` it counts and reads, so a new format
is one class (and one entry in its kind's table: ``prompt_formats.BY_EXTENSION``,
``image_formats.BY_EXTENSION``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import pyarrow as pa

from pipelines.readers.fields import kept_fields
from pipelines.readers.plan import ReadOptions, Source
from pipelines.readers.tables import slice_table


class InputFormat(Protocol):
    """How one kind of source is counted when the job is planned and read when a unit runs."""

    @property
    def name(self) -> str:
        """Short name, shown in messages."""
        ...

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        """``source`` with its record count (and seek offsets every ``stride`` records where the format
        allows); a source that cannot be counted comes back as one error record (see ``unreadable``)."""
        ...

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        """Records ``[start, stop)`` as a ``tables.SLICE_SCHEMA`` table of exactly ``stop - start`` rows; a
        record that cannot be read is a row with ``read_error`` set, never a missing row."""
        ...

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        """The keys of records ``[start, stop)`` as planning knows them (for error rows of a source that
        cannot be read at all)."""
        ...


@runtime_checkable
class SampleKeyed(Protocol):
    """A format whose records are named by their samples' keys (tar shards), read to check collisions."""

    def sample_keys(self, source: Source, options: ReadOptions) -> list[str]:
        """Every sample key of ``source``, in order."""
        ...


def indexed_keys(source: Source, start: int, stop: int) -> list[str]:
    """``{name}-{index:09d}``: the keys of records numbered by their position in their file."""
    return [f"{source.name}-{i:09d}" for i in range(start, stop)]


@dataclass(frozen=True)
class Unreadable:
    """A source that is one error record: an unsupported file, or one that could not be counted.

    ``indexed`` keys it as ``{name}-000000000`` (prompt files, whose records are numbered), else ``{name}``
    (image files, one record each)."""

    indexed: bool = True

    @property
    def name(self) -> str:
        return "unreadable"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return replace(source, num_records=1)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        keys = self.planned_keys(source, start, stop)
        return slice_table(keys, source.uri, errors=source.error, metadata=_null_metadata(options, len(keys)))

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return indexed_keys(source, start, stop) if self.indexed else [source.name]


def unreadable(source: Source, reason: str, *, indexed: bool) -> Source:
    """``source`` as one error record with ``reason``."""
    return replace(source, format=Unreadable(indexed), num_records=1, error=reason)


def _null_metadata(options: ReadOptions, n: int) -> list[str | None] | None:
    """The metadata column of records whose kept fields are unknown: each kept field null."""
    if not options.keep_fields:
        return None
    return [kept_fields(None, options.keep_fields)] * n
