"""Image inputs → reader records (``records.READER_SCHEMA``), one block per unit.

``uri`` is a file, a folder (recursive) or a glob; each file is handled by its extension:

- image files (``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``): one record each, ``image_bytes`` = the file's
  bytes (not decoded: decoding is the preprocess stage's job), ``prompt`` = the caption in a ``.txt`` file
  of the same stem beside it, if any (img2dataset's ``files`` layout). Key: the relative path without
  extension (the relative path with extension when two images differ only by extension).
- webdataset shards (``.tar``, img2dataset layout): one record per sample (consecutive members sharing a
  key, split as webdataset does at the first ``.`` of the basename). ``image_bytes`` = the first member
  among the image extensions above, ``prompt`` = the ``key.txt`` caption if any (other members are
  ignored, but for ``key.json``, see below). A sample without an image is a record with a ``read_error``.
  A truncated or corrupt tar yields every complete sample before the damage plus one error record (key
  ``{tar name}-error``) naming the tar, the reason and the sample cut by it. Key: the sample key if no
  other sample of the job has it, else ``{tar name}/{sample key}`` for every tar sample of the job (plus
  ``-{index:09d}`` in a tar that repeats a key itself).
- parquet (``.parquet``): one record per row; the image is ``column`` (default: ``image`` or else ``jpg``),
  either binary or a struct with a ``bytes`` field (Hugging Face ``Image``). The caption (``prompt``) is
  ``caption_column`` (default: ``caption`` or else ``text``) when present. Key: ``{name}-{row:09d}``.
- ``keep_fields`` (``input.keep_fields``) names what each record carries to its outputs as the ``metadata``
  JSON column: fields of the sample's ``key.json`` (tars) or of the ``.json`` file of the same stem beside an
  image file, or columns (parquet). A field that is missing, or a ``.json`` that is absent or not a JSON
  object, gives null.
- sidecars are not records of their own: ``.txt`` and ``.json`` files, and a ``.parquet`` next to a ``.tar``
  of the same stem (img2dataset writes both). Nor are names starting with ``.`` or ``_``.
- anything else is one record with ``read_error`` "not an image file: ..." so nothing is silently dropped.
"""

from __future__ import annotations

import functools
import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from pipelines import storage
from pipelines.readers.fields import caption_text, json_object, kept_fields
from pipelines.readers.units import (
    PlannedInput,
    Source,
    map_in_tasks,
    plan_units,
    read_parquet_slice,
    slice_table,
    unique_names,
)
from pipelines.readers.webdataset_tars import SampleRecord, TarDamage, read_sample, scan_tar

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff", "tif")
SIDECAR_EXTENSIONS = ("txt", "json")
DEFAULT_IMAGE_COLUMNS = ("image", "jpg")
DEFAULT_CAPTION_COLUMNS = ("caption", "text")


def read_images(
    uri: str,
    *,
    unit_size: int,
    skip_units: frozenset[int] = frozenset(),
    column: str | None = None,
    caption_column: str | None = None,
    storage_options: Mapping | None = None,
    keep_fields: Sequence[str] = (),
) -> ray.data.Dataset:
    """Read images from a folder, webdataset tars or parquet; one block per unit not in ``skip_units``."""
    planned = plan_images(
        uri,
        unit_size=unit_size,
        column=column,
        caption_column=caption_column,
        storage_options=storage_options,
        keep_fields=keep_fields,
    )
    return planned.to_dataset(skip_units)


def plan_images(
    uri: str,
    *,
    unit_size: int,
    column: str | None = None,
    caption_column: str | None = None,
    storage_options: Mapping | None = None,
    keep_fields: Sequence[str] = (),
) -> PlannedInput:
    """List the image inputs under ``uri``, count tar samples and parquet rows in Ray tasks, plan units."""
    fs, path = storage.open_filesystem(uri, storage_options)
    listed = storage.list_files(fs, path)
    kinds = _classify([f.relpath for f in listed])
    files = [(f, kind) for f, kind in zip(listed, kinds, strict=True) if kind is not None]
    if not files:
        raise FileNotFoundError(f"no image inputs under {uri} (only sidecar files)")
    sidecars = _sidecars([f for f, kind in zip(listed, kinds, strict=True) if kind is None])
    path_names = unique_names([f.relpath for f, _ in files], use_stem=False)
    stem_names = unique_names([f.relpath for f, _ in files])
    protos = []
    for (f, kind), path_name, stem_name in zip(files, path_names, stem_names, strict=True):
        proto = Source(
            uri=storage.to_uri(fs, f.path),
            path=f.path,
            name=path_name if kind in ("image", "other") else stem_name,
            kind=kind,
            num_records=1,
            stamp=f.stamp,
        )
        if kind == "image" and (beside := sidecars.get(posixpath.splitext(f.path)[0])):
            proto = replace(
                proto,
                sidecars=tuple((_extension(s.path), s.path) for s in beside),
                stamp="|".join([f.stamp, *(s.stamp for s in beside)]),  # a new caption redoes the image
            )
        if kind == "other":
            proto = replace(proto, error=f"not an image file: {f.relpath}")
        protos.append(proto)
    options = dict(storage_options or {})
    counted = map_in_tasks(
        functools.partial(_count, storage_options=options, stride=unit_size),
        [p for p in protos if p.kind in ("tar", "parquet")],
    )
    by_uri = {source.uri: (source, keys) for source, keys in counted}
    sources = [by_uri[p.uri][0] if p.uri in by_uri else p for p in protos]
    sources = _assign_tar_keys(sources, {u: keys for u, (_, keys) in by_uri.items()})
    reader = ImageReader(
        column=column, caption_column=caption_column, storage_options=options, keep_fields=tuple(keep_fields)
    )
    return PlannedInput(plan_units(sources, unit_size), reader)


def _classify(relpaths: list[str]) -> list[str | None]:
    """The kind of each file: image, tar, parquet, other, or None for a sidecar."""
    tar_stems = {posixpath.splitext(p)[0] for p in relpaths if _extension(p) == "tar"}
    kinds: list[str | None] = []
    for p in relpaths:
        ext = _extension(p)
        if ext in IMAGE_EXTENSIONS:
            kinds.append("image")
        elif ext == "tar":
            kinds.append("tar")
        elif ext == "parquet":
            kinds.append(None if posixpath.splitext(p)[0] in tar_stems else "parquet")
        elif ext in SIDECAR_EXTENSIONS:
            kinds.append(None)
        else:
            kinds.append("other")
    return kinds


def _sidecars(listed: list[storage.ListedFile]) -> dict[str, list[storage.ListedFile]]:
    """The sidecar files (``.txt``, ``.json``) of each path stem, in listing order."""
    found: dict[str, list[storage.ListedFile]] = {}
    for f in listed:
        if _extension(f.path) in SIDECAR_EXTENSIONS:
            found.setdefault(posixpath.splitext(f.path)[0], []).append(f)
    return found


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _assign_tar_keys(sources: list[Source], keys: dict[str, list[str]]) -> list[Source]:
    """Bare sample keys if unique across the job's tars, else ``{tar name}/`` prefixes (see module doc)."""
    tar_keys = Counter(k for source in sources if source.kind == "tar" for k in keys.get(source.uri, ()))
    if all(n == 1 for n in tar_keys.values()):
        return sources
    out = []
    for source in sources:
        if source.kind == "tar":
            own = keys.get(source.uri, [])
            source = replace(source, key_prefix=f"{source.name}/", index_keys=len(set(own)) != len(own))
        out.append(source)
    return out


# --- counting ------------------------------------------------------------------------------------------------


def _count(source: Source, *, storage_options: dict, stride: int) -> tuple[Source, list[str]]:
    """Count a tar's samples (noting a seek offset every ``stride`` samples) or a parquet file's rows."""
    try:
        fs, _ = storage.open_filesystem(source.uri, storage_options)
        with fs.open(source.path, "rb") as f:
            if source.kind == "parquet":
                return replace(source, num_records=pq.ParquetFile(f).metadata.num_rows), []
            keys: list[str] = []
            offsets: list[int] = []
            error = None
            for item in scan_tar(f, 0):
                if isinstance(item, TarDamage):
                    error = item.reason
                    break
                if len(keys) % stride == 0:
                    offsets.append(item.offset)
                keys.append(item.key)
        return replace(
            source,
            num_records=len(keys) + (error is not None),
            offsets=tuple(offsets),
            stride=stride,
            error=error,
        ), keys
    except Exception as exc:
        reason = f"cannot read {source.uri}: {type(exc).__name__}: {exc}"
        return replace(source, kind="broken", num_records=1, error=reason), []


# --- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReader:
    """Reads records ``[start, stop)`` of an image source (a ``units.SliceReader``)."""

    column: str | None
    caption_column: str | None
    storage_options: dict
    keep_fields: tuple[str, ...] = ()

    def __call__(self, source: Source, start: int, stop: int) -> pa.Table:
        if source.kind in ("other", "broken"):
            return slice_table([source.name], source.uri, errors=source.error, metadata=self._kept([None]))
        fs, _ = storage.open_filesystem(source.uri, self.storage_options)
        if source.kind == "image":
            return self._read_image_file(fs, source)
        if source.kind == "parquet":
            return self._read_parquet(fs, source, start, stop)
        return self._read_tar(fs, source, start, stop)

    def _kept(self, fields: Sequence[Mapping | None]) -> list[str] | None:
        """The metadata column for records with these fields (None when nothing is kept)."""
        return [kept_fields(f, self.keep_fields) for f in fields] if self.keep_fields else None

    def _read_image_file(self, fs: Any, source: Source) -> pa.Table:
        data = storage.read_bytes(fs, source.path)
        caption_path, fields_path = source.sidecar("txt"), source.sidecar("json")
        caption = None
        if caption_path is not None:
            caption = caption_text(storage.read_bytes(fs, caption_path))
        fields = None
        if fields_path is not None and self.keep_fields:
            fields = json_object(storage.read_bytes(fs, fields_path))
        return slice_table(
            [source.name],
            source.uri,
            prompts=[caption],
            images=[data],
            errors=[None if data else "empty image file"],
            metadata=self._kept([fields]),
        )

    def _read_parquet(self, fs: Any, source: Source, start: int, stop: int) -> pa.Table:
        keys = [f"{source.name}-{i:09d}" for i in range(start, stop)]
        with fs.open(source.path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            image_col = _pick(names, self.column, DEFAULT_IMAGE_COLUMNS)
            caption_col = _pick(names, self.caption_column, DEFAULT_CAPTION_COLUMNS)
            if image_col is None:
                wanted = self.column or " or ".join(DEFAULT_IMAGE_COLUMNS)
                reason = f"no image column {wanted} (columns: {', '.join(names)})"
                return slice_table(keys, source.uri, errors=reason, metadata=self._kept([None] * len(keys)))
            kept = [c for c in self.keep_fields if c in names]
            columns = list(dict.fromkeys([image_col, *([caption_col] if caption_col else []), *kept]))
            table = read_parquet_slice(pf, columns, start, stop)
        images, errors = _image_values(table.column(image_col), image_col)
        prompts = None
        caption_type = table.schema.field(caption_col).type if caption_col is not None else None
        if caption_type is not None and (
            pa.types.is_string(caption_type) or pa.types.is_large_string(caption_type)
        ):
            prompts = table.column(caption_col).to_pylist()
        fields = table.select(kept).to_pylist() if kept else [None] * table.num_rows
        return slice_table(
            keys, source.uri, prompts=prompts, images=images, errors=errors, metadata=self._kept(fields)
        )

    def _read_tar(self, fs: Any, source: Source, start: int, stop: int) -> pa.Table:
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
                keys.append(f"{source.key_prefix}{item.key}" + (f"-{index:09d}" if source.index_keys else ""))
                read.append(
                    read_sample(item, image_extensions=IMAGE_EXTENSIONS, with_fields=bool(self.keep_fields))
                )
        if source.error is not None and stop == source.num_records:
            keys.append(f"{source.name}-error")
            read.append(SampleRecord(error=f"{source.uri}: {source.error}"))
        return slice_table(
            keys,
            source.uri,
            prompts=[r.caption for r in read],
            images=[r.image for r in read],
            errors=[r.error for r in read],
            metadata=self._kept([r.fields for r in read]),
        )


# --- parquet -------------------------------------------------------------------------------------------------


def _pick(names: list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    for name in (wanted,) if wanted is not None else defaults:
        if name in names:
            return name
    return None


def _image_values(column: pa.ChunkedArray, name: str) -> tuple[list[bytes | None], list[str | None]]:
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
