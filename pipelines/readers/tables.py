"""Tables a format's reader returns: ``SLICE_SCHEMA`` rows, and reading a row range of a parquet file."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import records

# Columns a slice reader returns: the reader schema without ``unit`` (the datasource adds it).
SLICE_SCHEMA = pa.schema([f for f in records.READER_SCHEMA if f.name != records.UNIT])


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
