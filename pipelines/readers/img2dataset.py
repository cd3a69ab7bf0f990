"""img2dataset corpora in its three output layouts (img2dataset 1.47, ``writer.py``), read exactly.

For each shard ``{shard}`` (``00000``, ...) img2dataset writes ``{shard}_stats.json`` (``count``,
``successes``, ``failed_to_download``, ``failed_to_resize``, ...) and, by ``output_format``:

- ``webdataset``: ``{shard}.tar`` (one sample per successful download: ``key.jpg``, ``key.txt``,
  ``key.json``) and ``{shard}.parquet``, its metadata: one row per URL of the shard (``key``, ``status``,
  ``error_message``, ``url``, ``caption``, ``width``, ``height``, ``original_width``, ``original_height``,
  ``exif``, ``sha256``, ...), the ``status == "success"`` rows being the tar's samples in the tar's order;
- ``files``: the folder ``{shard}/`` (``key.jpg``, ``key.txt``, ``key.json`` per success) and the same
  ``{shard}.parquet`` metadata;
- ``parquet``: ``{shard}.parquet`` holding the metadata columns plus the image (column ``jpg``, or the
  ``encode_format``), one row per URL, the image null on the rows whose download or resize failed.

Here the metadata is metadata in all three layouts, never records: a tar is counted from it without reading
the tar (:class:`Img2datasetTar`, checked when read: ``planned_tars``), a folder's images keep img2dataset's
``key`` as their record key, and a parquet shard's records are its successful rows keyed by ``key``
(:class:`Img2datasetParquet`). So one corpus gives the same records under the same keys in every layout.

Failed downloads (``status != "success"``) are not records in any layout: img2dataset leaves them out of its
tars and folders, and counting them as records in the parquet layout only would make the layouts disagree
(and turn a corpus's download failures into this job's errors). They are not dropped silently either: each
source reports them (``Source.excluded``, by status), and the plan sums them (``PlannedInput.excluded``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import storage
from pipelines.readers.formats import unreadable
from pipelines.readers.image_formats import (
    DEFAULT_CAPTION_COLUMNS,
    WebdatasetTar,
    image_values,
    kept_column,
    pick_column,
    positional_keys,
    sample_key,
)
from pipelines.readers.plan import ReadOptions, Source
from pipelines.readers.planned_tars import disagreement_rows, read_checked
from pipelines.readers.ranged import RangedFile
from pipelines.readers.tables import slice_table
from pipelines.readers.tar_keys import KeyDigest
from unidiffuser.locations import describe_error

SUCCESS = "success"
KEY_COLUMN, STATUS_COLUMN = "key", "status"
IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset's encode_format names the parquet layout's image column
PARQUET_FETCH_SIZE = 1 << 20  # ranged reads of a parquet shard: its footer and the column chunks asked for


@dataclass(frozen=True)
class Img2datasetListing:
    """What a listing shows of img2dataset shards: the metadata parquet of each shard stem that has a tar or a
    folder beside it (relative path without extension -> listed file)."""

    metadata: dict[str, storage.ListedFile]

    @classmethod
    def of(cls, listed: Sequence[storage.ListedFile]) -> Img2datasetListing:
        stems = {posixpath.splitext(f.relpath)[0]: f for f in listed if f.relpath.endswith(".parquet")}
        shards: set[str] = set()
        for f in listed:
            stem, ext = posixpath.splitext(f.relpath)
            if ext.lower() == ".tar":
                shards.add(stem)
            parent = posixpath.dirname(f.relpath)
            if parent:
                shards.add(parent)
        return cls({stem: f for stem, f in stems.items() if stem in shards})

    def is_metadata(self, relpath: str) -> bool:
        """Whether ``relpath`` is a shard's metadata parquet (not records)."""
        return relpath.endswith(".parquet") and posixpath.splitext(relpath)[0] in self.metadata

    def metadata_of(self, relpath: str) -> storage.ListedFile | None:
        """The metadata of the tar ``{shard}.tar`` or of a file of the folder ``{shard}/``, if listed."""
        stem = posixpath.splitext(relpath)[0]
        return self.metadata.get(stem) or self.metadata.get(posixpath.dirname(relpath))


class NotMetadata(ValueError):
    """A parquet file beside a shard that is not img2dataset's metadata (no ``key`` and ``status``)."""


@dataclass(frozen=True)
class ShardMetadata:
    """One shard's metadata: the keys of its successful samples, in order, and the other rows by status."""

    keys: list[str]
    excluded: dict[str, int]

    @property
    def excluded_items(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.excluded.items()))

    @classmethod
    def of(cls, table: pa.Table) -> ShardMetadata:
        status = table.column(STATUS_COLUMN)
        success = pc.fill_null(pc.equal(status, SUCCESS), False)
        keys = table.column(KEY_COLUMN).filter(success).to_pylist()
        failed = pc.value_counts(pc.fill_null(status.filter(pc.invert(success)), "null")).to_pylist()
        return cls([str(k) for k in keys], {f"img2dataset {v['values']}": v["counts"] for v in failed})


def read_shard_metadata(fs: AbstractFileSystem, path: str, size: int | None = None) -> ShardMetadata:
    """The ``key`` and ``status`` columns of a metadata (or parquet-layout) file, read by ranged requests."""
    with _open_parquet(fs, path, size) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if KEY_COLUMN not in names or STATUS_COLUMN not in names:
            raise NotMetadata(f"{path} has no {KEY_COLUMN!r} and {STATUS_COLUMN!r} columns")
        return ShardMetadata.of(pf.read(columns=[KEY_COLUMN, STATUS_COLUMN]))


def _open_parquet(fs: AbstractFileSystem, path: str, size: int | None):  # noqa: ANN202 - a file object
    if storage.is_local(fs):
        return fs.open(path, "rb")
    return RangedFile(fs, path, size if size is not None else int(fs.info(path)["size"]),
                      fetch_size=PARQUET_FETCH_SIZE)  # fmt: skip


@dataclass(frozen=True)
class Img2datasetTar:
    """A tar of img2dataset's webdataset layout, counted from its metadata parquet (the ``parquet`` sidecar):
    no byte of the tar is read at planning; its segments are read checked against the metadata's keys."""

    metadata_size: int | None = None  # bytes of the metadata parquet, as listed (saves a request)

    @property
    def name(self) -> str:
        return "img2dataset tar"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return self.count_with_digest(source, options, stride)[0]

    def count_with_digest(
        self, source: Source, options: ReadOptions, stride: int
    ) -> tuple[Source, KeyDigest]:
        """Counted from the metadata; a parquet beside the tar that is not img2dataset's metadata leaves the
        tar to be counted by scanning its headers."""
        metadata = source.sidecar("parquet")
        assert metadata is not None
        try:
            fs, _ = storage.open_filesystem(source.uri, options.storage_options)
            shard = read_shard_metadata(fs, metadata, self.metadata_size)
        except NotMetadata:
            return WebdatasetTar().count_with_digest(replace(source, format=WebdatasetTar()), options, stride)
        except Exception as exc:
            reason = f"cannot read {storage.to_uri(fs, metadata)}: {describe_error(exc)}"
            return unreadable(source, reason, indexed=False), KeyDigest()
        counted = replace(
            source,
            num_records=len(shard.keys),
            excluded=shard.excluded_items,
            planned_from=storage.to_uri(fs, metadata),
        )
        return counted, KeyDigest.of(shard.keys)

    def sample_keys(self, source: Source, options: ReadOptions) -> list[str]:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        metadata = source.sidecar("parquet")
        assert metadata is not None
        return read_shard_metadata(fs, metadata).keys

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return positional_keys(source, start, stop)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        metadata = source.sidecar("parquet")
        assert metadata is not None
        claim = f"img2dataset metadata {storage.to_uri(fs, metadata)}"
        keys = read_shard_metadata(fs, metadata, self.metadata_size).keys
        if len(keys) != source.num_records:
            problem = f"it lists {len(keys)} samples now, {source.num_records} when the job was planned"
            return disagreement_rows(source, start, stop, options, None, f"{problem} ({claim})")
        return read_checked(source, start, stop, options, expected=keys, claim=claim)


@dataclass(frozen=True)
class Img2datasetParquet:
    """A parquet shard with a ``key`` column: img2dataset's parquet layout (with ``status``: only its
    ``success`` rows are records, the others are reported as excluded) or a job output's ``parquet/`` shard
    (every row a record). Records are keyed by ``key``; the image column is ``ReadOptions.field`` or the
    first of ``image``, ``jpg``, ``png``, ``webp``; the caption ``caption`` or ``text``."""

    with_status: bool = True

    @property
    def name(self) -> str:
        return "keyed parquet"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return self.count_with_digest(source, options, stride)[0]

    def count_with_digest(
        self, source: Source, options: ReadOptions, stride: int
    ) -> tuple[Source, KeyDigest]:
        try:
            fs, _ = storage.open_filesystem(source.uri, options.storage_options)
            shard = self._metadata(fs, source)
        except Exception as exc:
            return unreadable(
                source, f"cannot read {source.uri}: {describe_error(exc)}", indexed=False
            ), KeyDigest()
        counted = replace(source, num_records=len(shard.keys), excluded=shard.excluded_items)
        return counted, KeyDigest.of(shard.keys)

    def sample_keys(self, source: Source, options: ReadOptions) -> list[str]:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        return self._metadata(fs, source).keys

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return positional_keys(source, start, stop)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        with _open_parquet(fs, source.path, source.size) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            image_col = pick_column(names, options.field, ("image", *IMAGE_COLUMNS))
            caption_col = pick_column(names, options.caption_field, DEFAULT_CAPTION_COLUMNS)
            kept = [c for c in options.keep_fields if c in names]
            wanted = [KEY_COLUMN, *([STATUS_COLUMN] if self.with_status else [])]
            rows = _record_rows(pf.read(columns=wanted), self.with_status)
            if len(rows) != source.num_records:
                problem = f"it holds {len(rows)} records now, {source.num_records} when the job was planned"
                return disagreement_rows(source, start, stop, options, None, problem)
            chosen = rows[start:stop]
            columns = list(dict.fromkeys([KEY_COLUMN, *(c for c in (image_col, caption_col) if c), *kept]))
            table = _take_rows(pf, columns, chosen)
        keys = [
            sample_key(source, str(k), start + i) for i, k in enumerate(table.column(KEY_COLUMN).to_pylist())
        ]
        if image_col is None:
            reason = f"no image column {options.field or 'image or jpg'} (columns: {', '.join(names)})"
            return slice_table(
                keys, source.uri, errors=reason, metadata=kept_column(options, [None] * len(keys))
            )
        images, errors = image_values(table.column(image_col), image_col)
        prompts = table.column(caption_col).to_pylist() if caption_col else None
        fields = table.select(kept).to_pylist() if kept else [None] * table.num_rows
        return slice_table(
            keys,
            source.uri,
            prompts=prompts,
            images=images,
            errors=errors,
            metadata=kept_column(options, fields),
        )

    def _metadata(self, fs: AbstractFileSystem, source: Source) -> ShardMetadata:
        if self.with_status:
            return read_shard_metadata(fs, source.path, source.size)
        with _open_parquet(fs, source.path, source.size) as f:
            keys = pq.ParquetFile(f).read(columns=[KEY_COLUMN]).column(KEY_COLUMN).to_pylist()
        return ShardMetadata([str(k) for k in keys], {})


def _record_rows(table: pa.Table, with_status: bool) -> list[int]:
    """Row numbers of the records: every row, or the ``success`` rows."""
    if not with_status:
        return list(range(table.num_rows))
    success = pc.fill_null(pc.equal(table.column(STATUS_COLUMN), SUCCESS), False)
    return pc.indices_nonzero(success).to_pylist()


def _take_rows(pf: pq.ParquetFile, columns: list[str], rows: list[int]) -> pa.Table:
    """``columns`` of the given (ascending) rows, reading only the row groups that hold them."""
    if not rows:
        return pf.schema_arrow.empty_table().select(columns)
    groups, starts, row = [], [], 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if row <= rows[-1] and row + n > rows[0]:
            groups.append(i)
            starts.append(row)
        row += n
    table = pf.read_row_groups(groups, columns=columns)
    return table.take(pa.array([r - starts[0] for r in rows], pa.int64()))
