"""Prompt files → reader records (``records.READER_SCHEMA``), one block per unit.

Formats, by file extension:

- ``.txt``: one prompt per line (``\\n`` or ``\\r\\n``; a UTF-8 BOM is dropped). A final newline at end of
  file makes no record, but a blank line anywhere else is a record with prompt ``""`` so later stages
  report it: every line is accounted for.
- ``.jsonl``: one JSON object per line; the prompt is ``obj[field]``. Blank lines and invalid JSON are
  records with a ``read_error``.
- ``.json``: one JSON array of objects (parsed whole per unit: use ``.jsonl`` for big inputs).
- ``.csv`` / ``.tsv``: a header row and a prompt column (parsed whole per unit: use parquet for big inputs).
- ``.parquet``: a string column (only the row groups a unit needs are read).

``field`` names the prompt field/column. When it is ``None``, a field/column named ``prompt`` is used,
else one named ``text`` (for JSON this is decided per object). A record whose field is missing, null or not
a string gets ``prompt=None`` and a ``read_error`` saying why; it is never dropped. Any other file in a
folder is one error record ("unsupported prompt file"), and so is a file that cannot be parsed at all.

``keep_fields`` (``input.keep_fields``) names fields (JSON, JSONL) or columns (CSV, TSV, parquet) that each
record carries to its outputs as the ``metadata`` JSON column; a field a record lacks is null there.

Keys are ``{name}-{index:09d}`` where ``index`` is the 0-based line (txt, jsonl), element (json) or row
(csv, tsv, parquet) index in the file and ``name`` is the file's stem, or (only when two input files share
a stem) its relative path without extension, or its relative path (see ``units.unique_names``).
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray.data

from pipelines import storage
from pipelines.readers.fields import kept_fields
from pipelines.readers.units import (
    PlannedInput,
    Source,
    map_in_tasks,
    plan_units,
    read_parquet_slice,
    slice_table,
    unique_names,
)

DEFAULT_FIELDS = ("prompt", "text")
_KINDS = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_LINE_KINDS = ("txt", "jsonl")
_CHUNK = 8 << 20


def read_prompts(
    uri: str,
    *,
    field: str | None = None,
    unit_size: int,
    skip_units: frozenset[int] = frozenset(),
    storage_options: Mapping | None = None,
) -> ray.data.Dataset:
    """Read prompts from a file, a folder (recursive) or a glob; one block per unit not in ``skip_units``."""
    planned = plan_prompts(uri, field=field, unit_size=unit_size, storage_options=storage_options)
    return planned.to_dataset(skip_units)


def plan_prompts(
    uri: str,
    *,
    field: str | None = None,
    unit_size: int,
    storage_options: Mapping | None = None,
    keep_fields: Sequence[str] = (),
) -> PlannedInput:
    """List and count the prompt files under ``uri`` (counting runs in parallel Ray tasks) and plan units."""
    fs, path = storage.open_filesystem(uri, storage_options)
    files = storage.list_files(fs, path)
    names = unique_names([f.relpath for f in files])
    protos = [
        Source(
            uri=storage.to_uri(fs, f.path),
            path=f.path,
            name=name,
            kind=_KINDS.get(posixpath.splitext(f.path)[1].lower(), "unsupported"),
            num_records=0,
            stamp=f.stamp,
        )
        for f, name in zip(files, names, strict=True)
    ]
    options = dict(storage_options or {})
    count = functools.partial(_count, storage_options=options, field=field, stride=unit_size)
    sources = map_in_tasks(count, protos)
    reader = PromptReader(field=field, storage_options=options, keep_fields=tuple(keep_fields))
    return PlannedInput(plan_units(sources, unit_size), reader)


# --- counting ------------------------------------------------------------------------------------------------


def _count(source: Source, *, storage_options: dict, field: str | None, stride: int) -> Source:
    if source.kind == "unsupported":
        ext = posixpath.splitext(source.path)[1] or "(none)"
        reason = f"unsupported prompt file extension {ext} (expected one of {', '.join(_KINDS)})"
        return replace(source, num_records=1, error=reason)
    try:
        fs, _ = storage.open_filesystem(source.uri, storage_options)
        if source.kind in _LINE_KINDS:
            with fs.open(source.path, "rb") as f:
                n, offsets = _index_lines(f, stride)
            return replace(source, num_records=n, offsets=offsets, stride=stride)
        if source.kind == "parquet":
            with fs.open(source.path, "rb") as f:
                return replace(source, num_records=pq.ParquetFile(f).metadata.num_rows)
        return replace(source, num_records=len(_load_whole(fs, source, field, ())[0]))
    except Exception as exc:
        return replace(
            source, kind="broken", num_records=1, error=f"cannot read {source.uri}: {_describe(exc)}"
        )


def _index_lines(f: Any, stride: int) -> tuple[int, tuple[int, ...]]:
    """Count lines (a last line without newline counts) and note the byte offset of every ``stride``-th."""
    offsets = [0]
    newlines = 0
    pos = 0
    last = b""
    while chunk := f.read(_CHUNK):
        in_chunk = chunk.count(b"\n")
        if newlines // stride == (newlines + in_chunk) // stride:  # no checkpoint inside this chunk
            newlines += in_chunk
        else:
            at = chunk.find(b"\n")
            while at >= 0:
                newlines += 1
                if newlines % stride == 0:
                    offsets.append(pos + at + 1)
                at = chunk.find(b"\n", at + 1)
        pos += len(chunk)
        last = chunk[-1:]
    return newlines + (1 if pos and last != b"\n" else 0), tuple(offsets)


# --- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptReader:
    """Reads records ``[start, stop)`` of a prompt source (a ``units.SliceReader``)."""

    field: str | None
    storage_options: dict
    keep_fields: tuple[str, ...] = ()

    def __call__(self, source: Source, start: int, stop: int) -> pa.Table:
        keys = [f"{source.name}-{i:09d}" for i in range(start, stop)]
        if source.error is not None:
            return slice_table(keys, source.uri, errors=source.error)
        fs, _ = storage.open_filesystem(source.uri, self.storage_options)
        if source.kind == "txt":
            lines = _read_lines(fs, source, start, stop)
            results = [_line_prompt(line, first=(start + i == 0)) for i, line in enumerate(lines)]
            fields: list[Mapping | None] = [None] * len(results)
        elif source.kind == "jsonl":
            lines = _read_lines(fs, source, start, stop)
            parsed = [_jsonl_object(line, first=(start + i == 0)) for i, line in enumerate(lines)]
            results = [(None, error) if error else _object_prompt(obj, self.field) for obj, error in parsed]
            fields = [obj if isinstance(obj, dict) else None for obj, _ in parsed]
        elif source.kind == "parquet":
            results, fields = _parquet_prompts(fs, source, start, stop, self.field, self.keep_fields)
        else:
            results, fields = _load_whole(fs, source, self.field, self.keep_fields)
            results, fields = results[start:stop], fields[start:stop]
        prompts = [p for p, _ in results]
        errors = [e for _, e in results]
        metadata = [kept_fields(f, self.keep_fields) for f in fields] if self.keep_fields else None
        return slice_table(keys, source.uri, prompts=prompts, errors=errors, metadata=metadata)


Result = tuple[str | None, str | None]  # (prompt, read_error)


def _read_lines(fs: Any, source: Source, start: int, stop: int) -> list[bytes]:
    first, offset = source.seek_point(start)
    lines: list[bytes] = []
    with fs.open(source.path, "rb") as f:
        f.seek(offset)
        for _ in range(start - first):
            f.readline()
        while len(lines) < stop - start:
            line = f.readline()
            if not line:
                raise EOFError(
                    f"file ends {stop - start - len(lines)} lines short of the records planned for it "
                    "(did it change since planning?)"
                )
            lines.append(line)
    return lines


def _decode_line(raw: bytes, *, first: bool) -> str:
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    return raw.decode("utf-8-sig" if first else "utf-8")


def _line_prompt(raw: bytes, *, first: bool) -> Result:
    try:
        return _decode_line(raw, first=first), None
    except UnicodeDecodeError as exc:
        return None, f"line is not valid UTF-8: {exc.reason} at byte {exc.start}"


def _jsonl_object(raw: bytes, *, first: bool) -> tuple[Any, str | None]:
    """(parsed value, None) or (None, read_error) for one JSONL line."""
    try:
        text = _decode_line(raw, first=first)
    except UnicodeDecodeError as exc:
        return None, f"line is not valid UTF-8: {exc.reason} at byte {exc.start}"
    if not text.strip():
        return None, "empty line (expected a JSON object)"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"


def _object_prompt(obj: Any, field: str | None) -> Result:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    names = (field,) if field is not None else DEFAULT_FIELDS
    for name in names:
        if name in obj:
            return _check_value(obj[name], name)
    return None, f"missing field {_wanted(field)} (fields: {', '.join(sorted(map(str, obj))) or 'none'})"


def _check_value(value: Any, name: str) -> Result:
    if value is None:
        return None, f"field {name!r} is null"
    if not isinstance(value, str):
        return None, f"field {name!r} is not a string (got {type(value).__name__})"
    return value, None


def _wanted(field: str | None) -> str:
    return repr(field) if field is not None else " or ".join(map(repr, DEFAULT_FIELDS))


def _pick_column(names: list[str], field: str | None) -> str | None:
    for name in (field,) if field is not None else DEFAULT_FIELDS:
        if name in names:
            return name
    return None


def _column_results(column: pa.ChunkedArray | None, n: int, name: str, all_names: list[str]) -> list[Result]:
    """(prompt, error) per row of a prompt column; ``name`` is the column as shown in messages."""
    if column is None:
        return [(None, f"missing column {name} (columns: {', '.join(all_names) or 'none'})")] * n
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return [(None, f"column {name} is not a string (got {column.type})")] * n
    return [
        (v, None) if v is not None else (None, f"null value in column {name}") for v in column.to_pylist()
    ]


def _load_whole(
    fs: Any, source: Source, field: str | None, keep: Sequence[str]
) -> tuple[list[Result], list[Mapping | None]]:
    """Parse a whole ``.json``/``.csv``/``.tsv`` file into (prompt, error) and the fields, per record."""
    if source.kind == "json":
        data = json.loads(storage.read_bytes(fs, source.path).decode("utf-8-sig"))
        if not isinstance(data, list):
            raise ValueError(f"expected a JSON array of objects, got {type(data).__name__}")
        fields = [obj if isinstance(obj, dict) else None for obj in data]
        return [_object_prompt(obj, field) for obj in data], fields
    if source.kind in ("csv", "tsv"):
        candidates = (field,) if field is not None else DEFAULT_FIELDS
        with fs.open(source.path, "rb") as f:
            table = pacsv.read_csv(
                f,
                parse_options=pacsv.ParseOptions(
                    delimiter="," if source.kind == "csv" else "\t", newlines_in_values=True
                ),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(candidates, pa.string())),
            )
        return _table_results(table, field, keep)
    raise ValueError(f"not a whole-file prompt format: {source.kind}")


def _parquet_prompts(
    fs: Any, source: Source, start: int, stop: int, field: str | None, keep: Sequence[str]
) -> tuple[list[Result], list[Mapping | None]]:
    with fs.open(source.path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        wanted = [c for c in dict.fromkeys([_pick_column(names, field), *keep]) if c in names]
        table = read_parquet_slice(pf, wanted, start, stop)
    return _table_results(table, field, keep, all_names=names)


def _table_results(
    table: pa.Table, field: str | None, keep: Sequence[str], all_names: list[str] | None = None
) -> tuple[list[Result], list[Mapping | None]]:
    """(prompt, error) and the kept fields per row of a CSV/TSV/parquet table."""
    names = all_names if all_names is not None else table.column_names
    column = _pick_column(table.column_names, field)
    if column is None:
        results = _column_results(None, table.num_rows, _wanted(field), names)
    else:
        results = _column_results(table.column(column), table.num_rows, repr(column), names)
    present = [c for c in keep if c in table.column_names]
    fields = table.select(present).to_pylist() if present else [None] * table.num_rows
    return results, fields


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
