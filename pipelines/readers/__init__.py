"""Readers: turn a job's input into ``records.READER_SCHEMA`` rows, one Ray Data block per planned unit.

``plan_input`` lists and counts the input (``plan_prompts``, ``plan_images``, ``plan_count``) into a
:class:`PlannedInput`: record and unit counts known without reading any record, for the accounting invariant
and for resume; its ``to_dataset`` builds the dataset. Each input format is one class (``formats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.config import InputKind, InputSpec
from pipelines.readers.count import plan_count, read_count
from pipelines.readers.images import plan_images, read_images
from pipelines.readers.naming import unique_names
from pipelines.readers.plan import PlannedInput, ReadOptions, Source, Unit, plan_units
from pipelines.readers.prompts import plan_prompts, read_prompts

__all__ = [
    "PlannedInput",
    "ReadOptions",
    "Source",
    "Unit",
    "plan_count",
    "plan_images",
    "plan_input",
    "plan_prompts",
    "plan_units",
    "read_count",
    "read_images",
    "read_prompts",
    "unique_names",
]


def plan_input(spec: InputSpec, *, unit_size: int, storage_options: Mapping[str, Any]) -> PlannedInput:
    """Plan a job's ``input`` section into units of ``unit_size`` inputs."""
    if spec.kind == InputKind.PROMPTS:
        assert spec.uri is not None  # the spec requires it
        return plan_prompts(
            spec.uri,
            field=spec.field,
            unit_size=unit_size,
            storage_options=storage_options,
            keep_fields=spec.keep_fields,
        )
    if spec.kind == InputKind.IMAGES:
        assert spec.uri is not None
        return plan_images(
            spec.uri,
            unit_size=unit_size,
            column=spec.field,
            storage_options=storage_options,
            keep_fields=spec.keep_fields,
        )
    assert spec.count is not None
    return plan_count(spec.count, unit_size=unit_size)
