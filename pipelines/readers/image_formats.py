"""Image input formats, one class each (see ``formats.InputFormat``); picked by file extension.

- :class:`ImageFile` (``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``): one record, ``image_bytes`` = the
  file's bytes (not decoded: decoding is the preprocess stage's job), ``prompt`` = the caption in a ``.txt``
  sidecar of the same stem (img2dataset's ``files`` layout), kept fields from a ``.json`` sidecar.
- :class:`WebdatasetTar` (``.tar``, img2dataset layout): one record per sample (consecutive members sharing a
  key, split as webdataset does at the first ``.`` of the basename). ``image_bytes`` = the first member among
  the image extensions, ``prompt`` = the ``key.txt`` caption, kept fields from ``key.json``. A sample without
  an image is a record with a ``read_error``; a truncated or corrupt tar yields every complete sample before
  the damage plus one error record (key ``{tar name}-error``) naming the tar, the reason and the cut sample.
- :class:`ParquetImages` (``.parquet``): one record per row; the image column is ``ReadOptions.field``
  (default ``image`` or else ``jpg``), binary or a struct with a ``bytes`` field (Hugging Face ``Image``); the
  caption is ``ReadOptions.caption_field`` (default ``caption`` or else ``text``) when present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.readers.fields import caption_text, json_object, kept_fields
from pipelines.readers.formats import indexed_keys, unreadable
from pipelines.readers.naming import dot_free
from pipelines.readers.plan import ReadOptions, Source
from pipelines.readers.ranged import DEFAULT_FETCH_SIZE, open_for_headers
from pipelines.readers.tables import read_parquet_slice, slice_table
from pipelines.readers.tar_keys import KeyDigest
from pipelines.readers.webdataset_tars import SampleRecord, TarDamage, read_sample, scan_tar
from unidiffuser.locations import describe_error

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff", "tif")
DEFAULT_IMAGE_COLUMNS = ("image", "jpg")
DEFAULT_CAPTION_COLUMNS = ("caption", "text")


def kept_column(options: ReadOptions, fields: Sequence[Mapping | None]) -> list[str] | None:
    """The metadata column for records with these fields (None when nothing is kept)."""
    return [kept_fields(f, options.keep_fields) for f in fields] if options.keep_fields else None


@dataclass(frozen=True)
class ImageFile:
    """One image file, with its ``.txt`` caption and ``.json`` fields sidecars."""

    name: str = "image"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return replace(source, num_records=1)

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return [source.name]

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        data = storage.read_bytes(fs, source.path)
        caption_path, fields_path = source.sidecar("txt"), source.sidecar("json")
        caption = None
        if caption_path is not None:
            caption = caption_text(storage.read_bytes(fs, caption_path))
        fields = None
        if fields_path is not None and options.keep_fields:
            fields = json_object(storage.read_bytes(fs, fields_path))
        return slice_table(
            [source.name],
            source.uri,
            prompts=[caption],
            images=[data],
            errors=[None if data else "empty image file"],
            metadata=kept_column(options, [fields]),
        )


def sample_key(source: Source, key: str, index: int) -> str:
    """The record key of the sample named ``key`` at ``index`` of a keyed source (tar, img2dataset parquet):
    dot-free, with the source's prefix and, where the source repeats keys, the index (see ``tar_keys``)."""
    return f"{source.key_prefix}{dot_free(key)}" + (f"-{index:09d}" if source.index_keys else "")


def positional_keys(source: Source, start: int, stop: int) -> list[str]:
    """Keys of records of a keyed source whose own keys are unknown (it cannot be read):
    ``{prefix}{name}-unreadable-{index:09d}``, distinct from any sample key (they hold no webdataset key of
    another source unless one is named so; the summary checks keys are unique)."""
    return [f"{source.key_prefix}{source.name}-unreadable-{i:09d}" for i in range(start, stop)]


@dataclass(frozen=True)
class WebdatasetTar:
    """A webdataset / img2dataset tar shard: counted by scanning member headers with bounded ranged reads
    (``ranged.RangedFile``: a few KiB per sample, never the whole object), read from a seek offset."""

    name: str = "tar"
    fetch_size: int = DEFAULT_FETCH_SIZE

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return self.count_with_digest(source, options, stride)[0]

    def count_with_digest(
        self, source: Source, options: ReadOptions, stride: int
    ) -> tuple[Source, KeyDigest]:
        """The counted source and the digest of its samples' keys (see ``tar_keys``)."""
        keys: list[str] = []
        try:
            fs, _ = storage.open_filesystem(source.uri, options.storage_options)
            offsets: list[int] = []
            error = None
            with open_for_headers(fs, source.path, source.size, fetch_size=self.fetch_size) as f:
                for item in scan_tar(f, 0):
                    if isinstance(item, TarDamage):
                        error = item.reason
                        break
                    if len(keys) % stride == 0:
                        offsets.append(item.offset)
                    keys.append(item.key)
        except Exception as exc:
            reason = f"cannot read {source.uri}: {describe_error(exc)}"
            return unreadable(source, reason, indexed=False), KeyDigest()
        counted = replace(
            source,
            num_records=len(keys) + (error is not None),
            offsets=tuple(offsets),
            stride=stride,
            error=error,
        )
        return counted, KeyDigest.of(keys)

    def sample_keys(self, source: Source, options: ReadOptions) -> list[str]:
        """The tar's sample keys, in order (for the exact key-collision check of ``tar_keys``)."""
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        with open_for_headers(fs, source.path, source.size, fetch_size=self.fetch_size) as f:
            return [item.key for item in scan_tar(f, 0) if not isinstance(item, TarDamage)]

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        """Sample keys are only known by reading the tar (see ``positional_keys``)."""
        return positional_keys(source, start, stop)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        first, offset = source.seek_point(start)
        samples = source.num_records - (source.error is not None)
        keys: list[str] = []
        read: list[SampleRecord] = []
        with fs.open(source.path, "rb") as f:
            for index, item in enumerate(scan_tar(f, offset), start=first):
                if index >= min(stop, samples) or isinstance(item, TarDamage):
                    break
                if index < start:
                    continue
                keys.append(sample_key(source, item.key, index))
                read.append(
                    read_sample(
                        item, image_extensions=IMAGE_EXTENSIONS, with_fields=bool(options.keep_fields)
                    )
                )
        if source.error is not None and stop == source.num_records:
            keys.append(f"{source.name}-error")
            read.append(SampleRecord(error=f"{source.uri}: {source.error}"))
        return samples_table(source, keys, read, options)


def samples_table(
    source: Source, keys: list[str], read: Sequence[SampleRecord], options: ReadOptions
) -> pa.Table:
    """The slice table of samples read from a tar."""
    return slice_table(
        keys,
        source.uri,
        prompts=[r.caption for r in read],
        images=[r.image for r in read],
        errors=[r.error for r in read],
        metadata=kept_column(options, [r.fields for r in read]),
    )


@dataclass(frozen=True)
class ParquetImages:
    """A parquet file with an image column (binary or Hugging Face ``{bytes, path}``) and an optional caption."""

    name: str = "parquet"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        try:
            fs, _ = storage.open_filesystem(source.uri, options.storage_options)
            with fs.open(source.path, "rb") as f:
                return replace(source, num_records=pq.ParquetFile(f).metadata.num_rows)
        except Exception as exc:
            return unreadable(source, f"cannot read {source.uri}: {describe_error(exc)}", indexed=False)

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return indexed_keys(source, start, stop)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        keys = self.planned_keys(source, start, stop)
        fs, _ = storage.open_filesystem(source.uri, options.storage_options)
        with fs.open(source.path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            image_col = pick_column(names, options.field, DEFAULT_IMAGE_COLUMNS)
            caption_col = pick_column(names, options.caption_field, DEFAULT_CAPTION_COLUMNS)
            if image_col is None:
                wanted = options.field or " or ".join(DEFAULT_IMAGE_COLUMNS)
                reason = f"no image column {wanted} (columns: {', '.join(names)})"
                return slice_table(
                    keys, source.uri, errors=reason, metadata=kept_column(options, [None] * len(keys))
                )
            kept = [c for c in options.keep_fields if c in names]
            columns = list(dict.fromkeys([image_col, *([caption_col] if caption_col else []), *kept]))
            table = read_parquet_slice(pf, columns, start, stop)
        images, errors = image_values(table.column(image_col), image_col)
        prompts = None
        caption_type = table.schema.field(caption_col).type if caption_col is not None else None
        if caption_type is not None and (
            pa.types.is_string(caption_type) or pa.types.is_large_string(caption_type)
        ):
            prompts = table.column(caption_col).to_pylist()
        fields = table.select(kept).to_pylist() if kept else [None] * table.num_rows
        return slice_table(
            keys,
            source.uri,
            prompts=prompts,
            images=images,
            errors=errors,
            metadata=kept_column(options, fields),
        )


BY_EXTENSION: dict[str, Any] = {
    **{ext: ImageFile() for ext in IMAGE_EXTENSIONS},
    "tar": WebdatasetTar(),
    "parquet": ParquetImages(),
}
"""The image format of each file extension (lower case, no dot)."""


def pick_column(names: list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    for name in (wanted,) if wanted is not None else defaults:
        if name in names:
            return name
    return None


def image_values(column: pa.ChunkedArray, name: str) -> tuple[list[bytes | None], list[str | None]]:
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = pc.struct_field(column, "bytes")
        kind = column.type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        reason = f"image column {name!r} is not binary or struct{{bytes}} (got {column.type})"
        return [None] * len(column), [reason] * len(column)
    values = column.to_pylist()
    errors = [None if v else f"no image bytes in column {name!r}" for v in values]
    return values, errors
