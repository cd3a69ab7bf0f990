"""The Ray Data datasource that reads each planned unit as exactly one block.

Each unit becomes one :class:`ray.data.ReadTask` returning one Arrow table (``records.READER_SCHEMA``), so one
unit is one block through every stage. A segment that cannot be read becomes error rows carrying the keys the
plan gave its records (never a gap, never another record's key).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import ray.data
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines import records
from pipelines.readers.plan import ReadOptions, Segment, Unit
from pipelines.readers.tables import SLICE_SCHEMA, slice_table
from unidiffuser.locations import describe_error


def unit_dataset(
    units: Sequence[Unit], options: ReadOptions, *, num_cpus: float | None = None, memory: int | None = None
) -> ray.data.Dataset:
    """A dataset with one read task (one block) per unit; ``num_cpus`` and ``memory`` per read task.

    ``override_num_blocks`` is pinned to the number of units so Ray Data never adds a split factor to the
    read, and the dataset's own context has ``target_max_block_size=None`` so a large unit is not sliced into
    several blocks (see ``UnitDatasource``).
    """
    ds = ray.data.read_datasource(
        UnitDatasource(units, options),
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

    def __init__(self, units: Sequence[Unit], options: ReadOptions):
        super().__init__()
        self._units = tuple(units)
        self._options = options

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
                functools.partial(read_unit, unit, self._options),
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


def read_unit(unit: Unit, options: ReadOptions, *, max_threads: int = 16) -> list[pa.Table]:
    """Read one unit into a single ``READER_SCHEMA`` table (a list of one, as a ReadTask returns).

    Segments are read by a small thread pool (reads are I/O bound: a unit of loose image files on S3 is
    hundreds of GETs) and concatenated in unit order.
    """
    read = functools.partial(read_segment, options=options)
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


def read_segment(segment: Segment, options: ReadOptions) -> pa.Table:
    """A segment's records through its source's format; a source that cannot be read (gone, replaced or
    damaged since planning) gives one error row per planned record, with the planned keys."""
    source = segment.source
    try:
        table = source.format.read(source, segment.start, segment.stop, options)
        if table.num_rows != segment.num_records:
            raise RuntimeError(
                f"reader returned {table.num_rows} records for {segment.num_records} planned "
                "(did the file change since planning?)"
            )
        return table.select(SLICE_SCHEMA.names).cast(SLICE_SCHEMA)
    except Exception as exc:  # a source that cannot be read is error records, never a crashed job
        keys = source.planned_keys(segment.start, segment.stop)
        return slice_table(keys, source.uri, errors=f"read failed: {describe_error(exc)}")
