"""``n`` empty records from nothing, for the modes that need no input (joint, unconditional image or text).

Records have key ``{i:09d}`` (``i`` = 0..n-1), source ``"count"``, no prompt and no image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import ray.data

from pipelines.readers.plan import PlannedInput, ReadOptions, Source, plan_units
from pipelines.readers.tables import slice_table

COUNT_SOURCE = "count"


def read_count(n: int, *, unit_size: int, skip_units: frozenset[int] = frozenset()) -> ray.data.Dataset:
    """``n`` records with only a key, one block per unit not in ``skip_units``."""
    return plan_count(n, unit_size=unit_size).to_dataset(skip_units)


def plan_count(n: int, *, unit_size: int) -> PlannedInput:
    """Plan ``n`` records into units of ``unit_size``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    source = Source(uri=COUNT_SOURCE, path="", name="", format=Count(), num_records=n)
    return PlannedInput(plan_units([source], unit_size), ReadOptions())


@dataclass(frozen=True)
class Count:
    """The count pseudo-source: records ``[start, stop)`` made from nothing."""

    name: str = "count"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return replace(source)

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return [f"{i:09d}" for i in range(start, stop)]

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        return slice_table(self.planned_keys(source, start, stop), source.uri)
