"""Prompt file formats, one class each (see ``formats.InputFormat``); picked by file extension.

- ``.txt`` (:class:`TextLines`): one prompt per line (``\\n`` or ``\\r\\n``; a UTF-8 BOM is dropped). A final
  newline at end of file makes no record, but a blank line anywhere else is a record with prompt ``""`` so
  later stages report it: every line is accounted for.
- ``.jsonl`` (:class:`JsonLines`): one JSON object per line; the prompt is ``obj[field]``. Blank lines and
  invalid JSON are records with a ``read_error``.
- ``.json`` (:class:`JsonArray`): one JSON array of objects (parsed whole per unit: use ``.jsonl`` for big
  inputs).
- ``.csv`` / ``.tsv`` (:class:`Delimited`): a header row and a prompt column (parsed whole per unit: use
  parquet for big inputs).
- ``.parquet`` (:class:`ParquetPrompts`): a string column (only the row groups a unit needs are read).

``ReadOptions.field`` names the prompt field/column. When it is ``None``, a field/column named ``prompt`` is
used, else one named ``text`` (for JSON this is decided per object). A record whose field is missing, null or
not a string gets ``prompt=None`` and a ``read_error`` saying why; it is never dropped.
``ReadOptions.keep_fields`` names fields (JSON, JSONL) or columns (CSV, TSV, parquet) each record carries to
its outputs as the ``metadata`` JSON column; a field a record lacks is null there.

Keys are ``{name}-{index:09d}`` where ``index`` is the 0-based line (txt, jsonl), element (json) or row
(csv, tsv, parquet) index in the file (see ``formats.indexed_keys``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.readers.fields import kept_fields
from pipelines.readers.formats import indexed_keys, unreadable
from pipelines.readers.plan import ReadOptions, Source
from pipelines.readers.tables import read_parquet_slice, slice_table
from unidiffuser.locations import describe_error

DEFAULT_FIELDS = ("prompt", "text")
CHUNK = 8 << 20  # bytes read at a time when indexing lines

Result = tuple[str | None, str | None]  # (prompt, read_error)
Fields = Mapping[str, Any] | None  # one record's fields, for input.keep_fields


class _PromptFormat:
    """What every prompt format shares: numbered keys, a count that turns failures into an error record,
    and assembling a slice from (prompt, error) results and fields."""

    name = "prompts"

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return indexed_keys(source, start, stop)

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        try:
            fs, _ = storage.open_filesystem(source.uri, options.storage_options)
            return self._count(fs, source, options, stride)
        except Exception as exc:
            return unreadable(source, f"cannot read {source.uri}: {describe_error(exc)}", indexed=True)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        results, fields = self._read(fs, source, start, stop, options)
        metadata = [kept_fields(f, options.keep_fields) for f in fields] if options.keep_fields else None
        return slice_table(
            self.planned_keys(source, start, stop),
            source.uri,
            prompts=[p for p, _ in results],
            errors=[e for _, e in results],
            metadata=metadata,
        )

    def _count(self, fs: Any, source: Source, options: ReadOptions, stride: int) -> Source:
        raise NotImplementedError

    def _read(
        self, fs: Any, source: Source, start: int, stop: int, options: ReadOptions
    ) -> tuple[list[Result], list[Fields]]:
        raise NotImplementedError


class _LineFormat(_PromptFormat):
    """One record per line, counted by scanning for newlines (an offset noted every ``stride`` lines)."""

    def _count(self, fs: Any, source: Source, options: ReadOptions, stride: int) -> Source:
        with fs.open(source.path, "rb") as f:
            n, offsets = index_lines(f, stride)
        return replace(source, num_records=n, offsets=offsets, stride=stride)


@dataclass(frozen=True)
class TextLines(_LineFormat):
    """``.txt``: one prompt per line."""

    name = "txt"

    def _read(
        self, fs: Any, source: Source, start: int, stop: int, options: ReadOptions
    ) -> tuple[list[Result], list[Fields]]:
        lines = read_lines(fs, source, start, stop)
        results = [_line_prompt(line, first=(start + i == 0)) for i, line in enumerate(lines)]
        return results, [None] * len(results)


@dataclass(frozen=True)
class JsonLines(_LineFormat):
    """``.jsonl``: one JSON object per line."""

    name = "jsonl"

    def _read(
        self, fs: Any, source: Source, start: int, stop: int, options: ReadOptions
    ) -> tuple[list[Result], list[Fields]]:
        lines = read_lines(fs, source, start, stop)
        parsed = [_jsonl_object(line, first=(start + i == 0)) for i, line in enumerate(lines)]
        results = [(None, error) if error else _object_prompt(obj, options.field) for obj, error in parsed]
        return results, [obj if isinstance(obj, dict) else None for obj, _ in parsed]


class _WholeFileFormat(_PromptFormat):
    """Parsed whole (per count and per unit): small inputs only."""

    def _count(self, fs: Any, source: Source, options: ReadOptions, stride: int) -> Source:
        return replace(source, num_records=len(self._parse(fs, source, options.field, ())[0]))

    def _read(
        self, fs: Any, source: Source, start: int, stop: int, options: ReadOptions
    ) -> tuple[list[Result], list[Fields]]:
        results, fields = self._parse(fs, source, options.field, options.keep_fields)
        return results[start:stop], fields[start:stop]

    def _parse(
        self, fs: Any, source: Source, field: str | None, keep: Sequence[str]
    ) -> tuple[list[Result], list[Fields]]:
        raise NotImplementedError


@dataclass(frozen=True)
class JsonArray(_WholeFileFormat):
    """``.json``: one array of objects."""

    name = "json"

    def _parse(
        self, fs: Any, source: Source, field: str | None, keep: Sequence[str]
    ) -> tuple[list[Result], list[Fields]]:
        data = json.loads(storage.read_bytes(fs, source.path).decode("utf-8-sig"))
        if not isinstance(data, list):
            raise ValueError(f"expected a JSON array of objects, got {type(data).__name__}")
        fields: list[Fields] = [obj if isinstance(obj, dict) else None for obj in data]
        return [_object_prompt(obj, field) for obj in data], fields


@dataclass(frozen=True)
class Delimited(_WholeFileFormat):
    """``.csv`` / ``.tsv``: a header row and a prompt column."""

    delimiter: str = ","

    @property
    def name(self) -> str:  # type: ignore[override]
        return "csv" if self.delimiter == "," else "tsv"

    def _parse(
        self, fs: Any, source: Source, field: str | None, keep: Sequence[str]
    ) -> tuple[list[Result], list[Fields]]:
        candidates = (field,) if field is not None else DEFAULT_FIELDS
        with fs.open(source.path, "rb") as f:
            table = pacsv.read_csv(
                f,
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(candidates, pa.string())),
            )
        return _table_results(table, field, keep)


@dataclass(frozen=True)
class ParquetPrompts(_PromptFormat):
    """``.parquet``: a string column; only the row groups a unit needs are read."""

    name = "parquet"

    def _count(self, fs: Any, source: Source, options: ReadOptions, stride: int) -> Source:
        with fs.open(source.path, "rb") as f:
            return replace(source, num_records=pq.ParquetFile(f).metadata.num_rows)

    def _read(
        self, fs: Any, source: Source, start: int, stop: int, options: ReadOptions
    ) -> tuple[list[Result], list[Fields]]:
        field, keep = options.field, options.keep_fields
        with fs.open(source.path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            wanted = [
                c for c in dict.fromkeys([_pick_column(names, field), *keep]) if c is not None and c in names
            ]
            table = read_parquet_slice(pf, wanted, start, stop)
        return _table_results(table, field, keep, all_names=names)


BY_EXTENSION: dict[str, _PromptFormat] = {
    ".txt": TextLines(),
    ".jsonl": JsonLines(),
    ".json": JsonArray(),
    ".csv": Delimited(","),
    ".tsv": Delimited("\t"),
    ".parquet": ParquetPrompts(),
}
"""The prompt format of each file extension (lower case)."""


# --- lines ---------------------------------------------------------------------------------------------------


def index_lines(f: Any, stride: int) -> tuple[int, tuple[int, ...]]:
    """Count lines (a last line without newline counts) and note the byte offset of every ``stride``-th."""
    chunk_size = CHUNK
    offsets = [0]
    newlines = 0
    pos = 0
    last = b""
    while chunk := f.read(chunk_size):
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


def read_lines(fs: Any, source: Source, start: int, stop: int) -> list[bytes]:
    """Lines ``[start, stop)`` of a line-format source, seeking to the nearest noted offset first."""
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


# --- objects and columns -------------------------------------------------------------------------------------


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


def _table_results(
    table: pa.Table, field: str | None, keep: Sequence[str], all_names: list[str] | None = None
) -> tuple[list[Result], list[Fields]]:
    """(prompt, error) and the kept fields per row of a CSV/TSV/parquet table."""
    names = all_names if all_names is not None else table.column_names
    column = _pick_column(table.column_names, field)
    if column is None:
        results = _column_results(None, table.num_rows, _wanted(field), names)
    else:
        results = _column_results(table.column(column), table.num_rows, repr(column), names)
    present = [c for c in keep if c in table.column_names]
    fields: list[Fields] = table.select(present).to_pylist() if present else [None] * table.num_rows
    return results, fields
