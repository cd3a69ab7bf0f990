"""The input image a record was made from, read again from its job's input corpus: what ``regenerate`` starts
from for the records whose output keeps no input image (i2t2i, and i2t written with ``caption_image: none`` or
a lossy model input).

    data = read_input_image(stored, storage_options)  # the input file's bytes, as the job's reader gave them

The corpus is planned as the job planned it (the summary's ``input`` and ``output.shard_size``: listings and
headers, no records), the record's unit alone is read, and that unit's input hash must be the one its marker
recorded: a corpus changed since the job ran (a file added before it, rewritten, or copied with other
modification times) is refused, never read in its place.

A copy of the corpus elsewhere (``input_uri``: a mirror, a local download) has other URIs and file versions, so
its units cannot have the job's input hashes; it is planned the same way and read without that check, and the
comparison of what is regenerated with what the job wrote is then the only proof that it holds the same files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from pipelines import records as r
from pipelines.config import InputSpec, OutputSpec
from pipelines.provenance.stored_record import StoredRecord
from pipelines.readers import plan_input
from pipelines.readers.datasource import read_segment, read_unit
from pipelines.readers.plan import ReadOptions, Unit
from unidiffuser.locations import describe_error, redact


class InputImageError(ValueError):
    """The record's input image cannot be read from its corpus: the message names the record and why."""


def read_input_image(
    stored: StoredRecord, storage_options: Mapping[str, Any], *, input_uri: str | None = None
) -> bytes:
    """The bytes of the input file ``stored`` was made from, from the job's input corpus, or from its copy at
    ``input_uri`` (see the module doc)."""
    key = stored.key
    try:
        spec = InputSpec.model_validate(
            (stored.config.get("input") or {}) | ({"uri": input_uri} if input_uri else {})
        )
        unit_size = OutputSpec.model_validate(stored.config.get("output") or {}).shard_size
    except ValidationError as error:
        raise InputImageError(
            f"record {key!r}: the summary's input section is not a job's: {error}"
        ) from None
    corpus = redact(str(spec.uri))
    try:
        planned = plan_input(spec, unit_size=unit_size, storage_options=storage_options)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputImageError(
            f"record {key!r}: cannot read its input corpus {corpus}: {describe_error(error)}"
        ) from None
    if stored.unit >= planned.num_units:
        raise InputImageError(
            f"record {key!r}: its input corpus {corpus} now plans {planned.num_units} units, the record's "
            f"unit is {stored.unit}: the corpus changed since the job ran"
        )
    unit = planned.units[stored.unit]
    if input_uri is None and stored.unit_input is not None and unit.input_hash != stored.unit_input:
        raise InputImageError(
            f"record {key!r}: unit {stored.unit} of its input corpus {corpus} is not what the job read (input "
            f"hash {unit.input_hash}, the job's {stored.unit_input}): the corpus changed since the job ran"
        )
    input_key = stored.row.get(r.INPUT_KEY) or key
    row = _input_row(unit, input_key, planned.options)
    if row is None:
        raise InputImageError(f"record {key!r}: no input {input_key!r} in unit {stored.unit} of {corpus}")
    if row[r.READ_ERROR] or row[r.IMAGE_BYTES] is None:
        reason = row[r.READ_ERROR] or "no image"
        raise InputImageError(f"record {key!r}: its input {input_key!r} in {corpus} cannot be read: {reason}")
    data: bytes = row[r.IMAGE_BYTES]
    return data


def _input_row(unit: Unit, input_key: str, options: ReadOptions) -> dict[str, Any] | None:
    """The record ``input_key`` of ``unit`` as its reader gives it, None when the unit has none. Where planning
    names the record (a loose image file is its own source), only that segment is read; otherwise (a tar's keys
    are known only by reading it) the whole unit is."""
    named = [s for s in unit.segments if input_key in s.source.planned_keys(s.start, s.stop)]
    if named:
        row = _first_row([read_segment(s, options) for s in named], input_key)
        if row is not None or len(named) == len(unit.segments):
            return row
    return _first_row(read_unit(unit, options), input_key)


def _first_row(tables: list[pa.Table], key: str) -> dict[str, Any] | None:
    for table in tables:
        rows = table.filter(pc.equal(table[r.KEY], key)).to_pylist()
        if rows:
            return rows[0]
    return None
