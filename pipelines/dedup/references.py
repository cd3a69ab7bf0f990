"""Decontamination: remove records that are near-duplicates of a reference (evaluation) set.

A reference is a named set of embeddings (``ReferenceSpec``: name, URI, cosine threshold), local or on any
fsspec filesystem, in one of two layouts:

- **clip-retrieval** embeddings folder: ``{uri}/{embeddings}/{embeddings}_{part}.npy`` (``embeddings`` is
  ``img_emb`` or ``text_emb``) and ``{uri}/metadata/metadata_{part}.parquet``, paired by ``part``; row ``i``
  of a metadata file describes row ``i`` of its matrix;
- **parquet**: one ``.parquet`` file, or a folder of them (sorted by name), with an id column and a list of
  floats embedding column.

Ids come from ``id_column``, else the first of ``key``, ``image_path``, ``id`` the metadata has; the embedding
column of parquet from ``embedding_column``, else the first of ``embedding``, ``img_emb``, ``text_emb``,
``emb``. Reference vectors are L2-normalised when loaded (a zero row, clip-retrieval's placeholder for a
record without that embedding, is dropped). A record is removed when its cosine with any vector of a
reference is at least that reference's threshold, with reason ``near-duplicate of reference {name}:{id}``
(the most similar reference vector; across references the highest cosine, ties by the references' order).

``validate_reference`` is the cheap check for the CLI's ``validate``: it reads listings, ``.npy`` headers and
parquet footers (and one row group for a parquet list column's width), never the vectors, and returns every
problem as one message naming the reference, the file and the values.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import storage
from pipelines.dedup.search import SearchConfig, nearest_matches
from pipelines.dedup.spec import REFERENCE_NAME
from pipelines.dedup.vectors import VectorSource, npy_shape, read_npy

ID_COLUMNS = ("key", "image_path", "id")
EMBEDDING_COLUMNS = ("embedding", "img_emb", "text_emb", "emb")
EMBEDDINGS_FOLDERS = ("img_emb", "text_emb")
NAME_PATTERN = re.compile(REFERENCE_NAME)


@dataclass(frozen=True)
class ReferenceSpec:
    """Where a reference set is and how close counts as contaminated (checked by ``validate_reference``)."""

    name: str  # e.g. "coco-val2017"; letters, digits, ".", "_", "-"
    uri: str
    threshold: float  # cosine in (0, 1]
    embeddings: str = "img_emb"  # clip-retrieval layout: img_emb or text_emb
    id_column: str | None = None
    embedding_column: str | None = None  # parquet layout


@dataclass(frozen=True)
class ReferenceSet:
    """A loaded reference: ids and unit-norm float32 vectors, row-aligned."""

    name: str
    threshold: float
    ids: list[str]
    vectors: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class ReferenceRemoval:
    """Record ``key`` is within its reference's threshold of ``reference_id`` of ``reference``."""

    key: str
    reference: str
    reference_id: str
    similarity: float

    @property
    def reason(self) -> str:
        """The removed record's reason string."""
        return f"near-duplicate of reference {self.reference}:{self.reference_id}"


@dataclass(frozen=True)
class _Part:
    """One file (or pair of files) of a reference: where its ids and vectors are."""

    vectors_path: str
    metadata_path: str  # the same as vectors_path for parquet


@dataclass(frozen=True)
class _Layout:
    kind: Literal["clip-retrieval", "parquet"]
    fs: AbstractFileSystem
    parts: list[_Part]


class ReferenceError(ValueError):
    """A reference cannot be used; the message names it and every problem found."""


def validate_reference(
    spec: ReferenceSpec, dim: int | None = None, storage_options: Mapping | None = None
) -> list[str]:
    """Every problem with ``spec`` (empty when it can be loaded), without reading the vectors.

    ``dim`` is the job's embedding size; a reference of another size is a problem naming both sizes.
    """
    problems = _spec_problems(spec)
    try:
        layout = _layout(spec, storage_options)
    except (FileNotFoundError, ReferenceError, OSError) as err:
        return problems + [_named(spec, str(err))]
    for part in layout.parts:
        try:
            rows, width = _part_header(spec, layout, part)
        except (ValueError, OSError, pa.ArrowException) as err:
            problems.append(_named(spec, str(err)))
            continue
        if dim is not None and rows and width != dim:
            problems.append(_named(spec, _size_problem(width, dim, part.vectors_path)))
    return problems


def load_reference(
    spec: ReferenceSpec, dim: int | None = None, storage_options: Mapping | None = None
) -> ReferenceSet:
    """The reference's ids and unit-norm vectors; raises ReferenceError naming every problem."""
    problems = _spec_problems(spec)
    if problems:
        raise ReferenceError("; ".join(problems))
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    try:
        layout = _layout(spec, storage_options)
        for part in layout.parts:
            part_ids, part_vectors = _read_part(spec, layout, part)
            if dim is not None and len(part_vectors) and part_vectors.shape[1] != dim:
                raise ValueError(_size_problem(part_vectors.shape[1], dim, part.vectors_path))
            ids.extend(part_ids)
            blocks.append(part_vectors)
    except (FileNotFoundError, OSError, pa.ArrowException, ValueError) as err:
        raise ReferenceError(_named(spec, str(err))) from err
    widths = {b.shape[1] for b in blocks if len(b)}
    if len(widths) > 1:
        raise ReferenceError(_named(spec, f"files of different embedding sizes {sorted(widths)}"))
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim or 0), np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    present = norms > 0
    vectors = (vectors[present] / norms[present, None]).astype(np.float32)
    return ReferenceSet(
        spec.name, spec.threshold, [i for i, p in zip(ids, present, strict=True) if p], vectors
    )


def reference_removals(
    keys: Sequence[str],
    vectors: VectorSource,
    references: Sequence[ReferenceSet],
    config: SearchConfig | None = None,
) -> list[ReferenceRemoval]:
    """The records (rows of ``vectors``, named by ``keys``) within a reference's threshold, in row order.

    ``config`` tunes the search (exact or IVF over each reference, Ray); its threshold is not used, each
    reference has its own. Raises ReferenceError when a reference's size differs from the vectors'.
    """
    if len(keys) != len(vectors):
        raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
    best: dict[int, ReferenceRemoval] = {}
    for reference in references:
        if len(reference.vectors) and reference.dim != vectors.dim:
            raise ReferenceError(_named(reference, _size_problem(reference.dim, vectors.dim)))
        matches = nearest_matches(reference.vectors, vectors, reference.threshold, config)
        for row, base, similarity in zip(
            matches.query.tolist(), matches.base.tolist(), matches.similarity.tolist(), strict=True
        ):
            if row not in best or similarity > best[row].similarity:
                best[row] = ReferenceRemoval(
                    keys[row], reference.name, reference.ids[base], float(similarity)
                )
    return [best[row] for row in sorted(best)]


# --- checks and messages ------------------------------------------------------------------------------------


def _named(spec: ReferenceSpec | ReferenceSet, message: str) -> str:
    return f"reference {spec.name}: {message}"


def _size_problem(size: int, dim: int, path: str | None = None) -> str:
    where = f" ({path})" if path else ""
    return f"embedding size {size}{where} differs from the job's embedding size {dim}"


def _spec_problems(spec: ReferenceSpec) -> list[str]:
    problems = []
    if not NAME_PATTERN.match(spec.name or ""):
        problems.append(
            f"reference name {spec.name!r} must be letters, digits, '.', '_' or '-' (it is written into reasons)"
        )
    if not isinstance(spec.threshold, int | float) or not 0.0 < spec.threshold <= 1.0:
        problems.append(_named(spec, f"threshold must be in (0, 1], got {spec.threshold}"))
    if spec.embeddings not in EMBEDDINGS_FOLDERS:
        problems.append(
            _named(spec, f"embeddings must be one of {EMBEDDINGS_FOLDERS}, got {spec.embeddings!r}")
        )
    return problems


# --- layouts --------------------------------------------------------------------------------------------------


def _layout(spec: ReferenceSpec, storage_options: Mapping | None) -> _Layout:
    """Which layout ``spec.uri`` holds and its files; FileNotFoundError / ReferenceError when neither."""
    fs, path = storage.open_filesystem(spec.uri, storage_options)
    fs.invalidate_cache()
    path = path.rstrip("/")
    if path.endswith(".parquet"):
        if not fs.isfile(path):
            raise FileNotFoundError(f"no such file: {spec.uri}")
        return _Layout("parquet", fs, [_Part(path, path)])
    if not fs.isdir(path):
        raise FileNotFoundError(f"no such file or folder: {spec.uri}")
    if fs.isdir(storage.join(path, "metadata")):
        return _Layout("clip-retrieval", fs, _clip_retrieval_parts(spec, fs, path))
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise ReferenceError(
            f"{spec.uri} is neither a clip-retrieval embeddings folder ({spec.embeddings}/ and metadata/) "
            "nor a parquet file or folder of parquet files"
        )
    return _Layout("parquet", fs, [_Part(f, f) for f in files])


def _clip_retrieval_parts(spec: ReferenceSpec, fs: AbstractFileSystem, path: str) -> list[_Part]:
    folder = storage.join(path, spec.embeddings)
    if not fs.isdir(folder):
        raise ReferenceError(f"clip-retrieval folder {spec.uri} has no {spec.embeddings}/ folder")
    matrices = _by_part(fs, folder, spec.embeddings, ".npy")
    metadata = _by_part(fs, storage.join(path, "metadata"), "metadata", ".parquet")
    problems = [
        f"{p} has no metadata file metadata_{k}.parquet" for k, p in matrices.items() if k not in metadata
    ]
    problems += [
        f"{p} has no matrix {spec.embeddings}_{k}.npy" for k, p in metadata.items() if k not in matrices
    ]
    if problems:
        raise ReferenceError("; ".join(problems))
    if not matrices:
        raise ReferenceError(f"no {spec.embeddings}_*.npy files under {folder}")
    return [_Part(matrices[k], metadata[k]) for k in sorted(matrices, key=_natural)]


def _by_part(fs: AbstractFileSystem, folder: str, prefix: str, suffix: str) -> dict[str, str]:
    found = {}
    for p in fs.ls(folder, detail=False) if fs.isdir(folder) else []:
        name = posixpath.basename(p)
        if name.startswith(prefix + "_") and name.endswith(suffix):
            found[name[len(prefix) + 1 : -len(suffix)]] = p
    return found


def _natural(part: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part))


# --- reading ----------------------------------------------------------------------------------------------------


def _part_header(spec: ReferenceSpec, layout: _Layout, part: _Part) -> tuple[int, int]:
    """``(rows, width)`` of one part from headers and footers; ValueError names the file and the problem."""
    schema, rows = _parquet_footer(layout.fs, part.metadata_path)
    _id_column(spec, schema, part.metadata_path)
    if layout.kind == "clip-retrieval":
        matrix_rows, width = npy_shape(layout.fs, part.vectors_path)
        if matrix_rows != rows:
            raise ValueError(
                f"{part.vectors_path} has {matrix_rows} rows but {part.metadata_path} has {rows}: rows must align"
            )
        return matrix_rows, width
    column = _embedding_column(spec, schema, part.metadata_path)
    kind = schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        return rows, kind.list_size
    with layout.fs.open(part.metadata_path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if parquet.metadata.num_row_groups == 0 or rows == 0:
            return 0, 0
        first = parquet.read_row_group(0, columns=[column]).column(0)
    lengths = pc.list_value_length(first).drop_null()
    return rows, int(lengths[0].as_py()) if len(lengths) else 0


def _parquet_footer(fs: AbstractFileSystem, path: str) -> tuple[pa.Schema, int]:
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            return parquet.schema_arrow, parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err


def _id_column(spec: ReferenceSpec, schema: pa.Schema, path: str) -> str:
    names = schema.names
    if spec.id_column is not None:
        if spec.id_column not in names:
            raise ValueError(f"{path} has no id column {spec.id_column!r} (columns: {names})")
        return spec.id_column
    for name in ID_COLUMNS:
        if name in names:
            return name
    raise ValueError(f"{path} has none of the id columns {ID_COLUMNS} (columns: {names}); set id_column")


def _embedding_column(spec: ReferenceSpec, schema: pa.Schema, path: str) -> str:
    names = schema.names
    column = spec.embedding_column or next((n for n in EMBEDDING_COLUMNS if n in names), None)
    if column is None or column not in names:
        wanted = repr(spec.embedding_column) if spec.embedding_column else f"any of {EMBEDDING_COLUMNS}"
        raise ValueError(f"{path} has no embedding column {wanted} (columns: {names})")
    kind = schema.field(column).type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not pa.types.is_floating(kind.value_type):
        raise ValueError(f"{path}: embedding column {column!r} is {kind}, not a list of floats")
    return column


def _read_part(spec: ReferenceSpec, layout: _Layout, part: _Part) -> tuple[list[str], np.ndarray]:
    schema, rows = _parquet_footer(layout.fs, part.metadata_path)
    id_column = _id_column(spec, schema, part.metadata_path)
    if layout.kind == "clip-retrieval":
        table = _read_table(layout.fs, part.metadata_path, [id_column])
        vectors = np.asarray(read_npy(layout.fs, part.vectors_path), dtype=np.float32)
        if len(vectors) != table.num_rows:
            raise ValueError(
                f"{part.vectors_path} has {len(vectors)} rows but {part.metadata_path} has {table.num_rows}: "
                "rows must align"
            )
    else:
        column = _embedding_column(spec, schema, part.metadata_path)
        table = _read_table(layout.fs, part.metadata_path, [id_column, column])
        vectors = _list_matrix(table.column(column), part.metadata_path)
    ids = table.column(id_column).to_pylist()
    if any(i is None for i in ids):
        raise ValueError(f"{part.metadata_path}: id column {id_column!r} has a null in row {ids.index(None)}")
    return [str(i) for i in ids], vectors


def _read_table(fs: AbstractFileSystem, path: str, columns: list[str]) -> pa.Table:
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _list_matrix(column: pa.ChunkedArray, path: str) -> np.ndarray:
    """A list<float> column as a float32 matrix; ValueError names the first row of another length or null."""
    array = column.combine_chunks()
    if len(array) == 0:
        return np.zeros((0, 0), np.float32)
    if array.null_count:
        raise ValueError(f"{path}: embedding row {array.is_null().to_pylist().index(True)} is null")
    lengths = pc.list_value_length(array).to_numpy()
    if (lengths != lengths[0]).any():
        row = int(np.nonzero(lengths != lengths[0])[0][0])
        raise ValueError(f"{path}: embedding row {row} has {lengths[row]} values, row 0 has {lengths[0]}")
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(array), int(lengths[0]))
