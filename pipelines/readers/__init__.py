"""Readers: turn a job's input into ``records.READER_SCHEMA`` rows, one Ray Data block per planned unit.

Each ``read_*`` function has a ``plan_*`` twin returning a :class:`PlannedInput` (record and unit counts
known without reading any record, for the accounting invariant and for resume) whose ``to_dataset``
builds the dataset.
"""

from pipelines.readers.count import plan_count, read_count
from pipelines.readers.images import plan_images, read_images
from pipelines.readers.prompts import plan_prompts, read_prompts
from pipelines.readers.units import PlannedInput, Source, Unit, plan_units

__all__ = [
    "PlannedInput",
    "Source",
    "Unit",
    "plan_count",
    "plan_images",
    "plan_prompts",
    "plan_units",
    "read_count",
    "read_images",
    "read_prompts",
]
