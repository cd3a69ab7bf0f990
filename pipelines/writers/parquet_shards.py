"""Parquet: a unit's output shard (format ``parquet``), and the schemas of its rejected and errored records.

Rows are plain dicts keyed by ``records`` column names (see ``unit_writer``); a missing key is null.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import records as r
from pipelines.writers.formats import OutputSpec, UnitRows

_EMBEDDING = pa.list_(pa.float32())
_STRINGS = pa.list_(pa.string())

_FIELDS = {
    f.name: f
    for f in (
        pa.field(r.KEY, pa.string(), nullable=False),
        pa.field(r.INPUT_KEY, pa.string()),
        pa.field(r.SAMPLE, pa.int32()),
        pa.field(r.SOURCE, pa.string()),
        pa.field(r.MODE, pa.string()),
        pa.field(r.PROMPT, pa.string()),
        pa.field(r.SOURCE_CAPTION, pa.string()),
        pa.field(r.GENERATED_CAPTION, pa.string()),
        pa.field(r.TEXT, pa.string()),
        pa.field(r.PROMPT_USED, pa.string()),
        pa.field(r.FLAGS, _STRINGS),
        pa.field(r.SYNTHETIC, _STRINGS),
        pa.field(r.IMAGE, pa.binary()),
        pa.field(r.IMAGE_FORMAT, pa.string()),
        pa.field(r.WIDTH, pa.int32()),
        pa.field(r.HEIGHT, pa.int32()),
        pa.field(r.PHASH, pa.string()),
        pa.field(r.CLIP_SCORE, pa.float64()),
        pa.field(r.REASON, pa.string()),
        pa.field(r.REJECT_RULES, _STRINGS),
        pa.field(r.SEED, pa.int64()),
        pa.field(r.MODEL_ID, pa.string()),
        pa.field(r.PARAMS, pa.string()),
        pa.field(r.METADATA, pa.string()),
        pa.field(r.IMAGE_EMBEDDING, _EMBEDDING),
        pa.field(r.TEXT_EMBEDDING, _EMBEDDING),
    )
}
_IDENTITY = (r.KEY, r.INPUT_KEY, r.SAMPLE, r.SOURCE, r.MODE)
_TEXTS = (r.PROMPT, r.SOURCE_CAPTION, r.GENERATED_CAPTION, r.TEXT, r.PROMPT_USED, r.FLAGS, r.SYNTHETIC)
_IMAGE = (r.IMAGE, r.IMAGE_FORMAT, r.WIDTH, r.HEIGHT, r.PHASH)


def _schema(names: Sequence[str], scores: Sequence[str], *, scores_after: str) -> pa.Schema:
    """The fields ``names``, with a float64 column per score head right after ``scores_after``."""
    fields: list[pa.Field] = []
    for name in names:
        fields.append(_FIELDS[name])
        if name == scores_after:
            fields += [pa.field(column, pa.float64()) for column in scores]
    return pa.schema(fields)


_SHARD = (*_IDENTITY, *_TEXTS, *_IMAGE, r.CLIP_SCORE, r.SEED, r.MODEL_ID, r.PARAMS, r.METADATA,
          r.IMAGE_EMBEDDING, r.TEXT_EMBEDDING)  # fmt: skip


def shard_schema(scores: Sequence[str] = ()) -> pa.Schema:
    """An output shard: one row per written record; image columns are null for text-only outputs."""
    return _schema(_SHARD, scores, scores_after=r.CLIP_SCORE)


def rejected_schema(scores: Sequence[str] = ()) -> pa.Schema:
    """Records a rule rejected: a shard's columns (image, seed, model id, params and embeddings included, so a
    user can look at what was thrown away, search it and regenerate it) plus the reason and the rules that
    rejected it, right after the scores."""
    at = _SHARD.index(r.CLIP_SCORE) + 1
    names = (*_SHARD[:at], r.REASON, r.REJECT_RULES, *_SHARD[at:])
    return _schema(names, scores, scores_after=r.CLIP_SCORE)


def errors_schema(scores: Sequence[str] = ()) -> pa.Schema:
    """Records some stage could not process, with the reason (and the scores taken before it failed)."""
    names = (*_IDENTITY, r.PROMPT, r.SOURCE_CAPTION, r.FLAGS, r.REASON, r.METADATA)
    return _schema(names, scores, scores_after=r.FLAGS)


SHARD_SCHEMA = shard_schema()
REJECTED_SCHEMA = rejected_schema()
ERRORS_SCHEMA = errors_schema()


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema``'s columns taken from ``rows`` (missing keys are null)."""
    return pa.table(
        {f.name: pa.array([row.get(f.name) for row in rows], f.type) for f in schema}, schema=schema
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialize ``table`` as one parquet file (zstd), ready for a whole-file write.

    An empty table is written with its schema and no row group: ``datasets``' parquet builder takes its batch
    size from the first row group and fails on an empty one (a unit whose records were all rejected)."""
    buffer = io.BytesIO()
    if table.num_rows == 0:
        pq.ParquetWriter(buffer, table.schema, compression="zstd").close()
    else:
        pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


PARQUET_DIR = "parquet"


class ParquetShards:
    """Format ``parquet``: ``parquet/{u}.parquet``, one row per written record (``SHARD_SCHEMA``); the folder
    holds nothing else, so any parquet reader can be pointed at it."""

    name = "parquet"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{PARQUET_DIR}/{unit}.parquet",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        return {path: parquet_bytes(rows_table(rows.ok, shard_schema(output.score_columns)))}


def table_file(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> bytes | None:
    """A parquet file of ``rows``, or None (no file) when there are none."""
    return parquet_bytes(rows_table(rows, schema)) if rows else None
