"""Image inputs: list a file, folder (recursive) or glob of images, webdataset tars and parquet files, and plan
them into units (the formats are in ``image_formats``).

- sidecars are not records of their own: ``.txt`` and ``.json`` files, and a ``.parquet`` next to a ``.tar``
  of the same stem (img2dataset writes both). Nor are names starting with ``.`` or ``_``.
- anything else is one record with ``read_error`` "not an image file: ..." so nothing is silently dropped.

Keys: an image file's relative path without extension (with extension when two images differ only by it);
a tar sample's key if no other sample of the job has it, else ``{tar name}/{sample key}`` for every tar sample
of the job (plus ``-{index:09d}`` in a tar that repeats a key itself); ``{file stem}-{row:09d}`` for parquet.
"""

from __future__ import annotations

import functools
import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

import ray.data

from pipelines import storage
from pipelines.readers import image_formats
from pipelines.readers.formats import Unreadable, unreadable
from pipelines.readers.image_formats import ImageFile, WebdatasetTar
from pipelines.readers.naming import unique_names
from pipelines.readers.parallel import map_in_tasks
from pipelines.readers.plan import PlannedInput, ReadOptions, Source, plan_units

SIDECAR_EXTENSIONS = ("txt", "json")


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
    options = ReadOptions(
        dict(storage_options or {}),
        field=column,
        caption_field=caption_column,
        keep_fields=tuple(keep_fields),
    )
    fs, path = storage.open_filesystem(uri, options.storage_options)
    listed = storage.list_files(fs, path)
    tar_stems = {posixpath.splitext(f.relpath)[0] for f in listed if _extension(f.relpath) == "tar"}
    records = [f for f in listed if not _is_sidecar(f.relpath, tar_stems)]
    if not records:
        raise FileNotFoundError(f"no image inputs under {uri} (only sidecar files)")
    sidecars = _sidecars([f for f in listed if _extension(f.path) in SIDECAR_EXTENSIONS])
    path_names = unique_names([f.relpath for f in records], use_stem=False)
    stem_names = unique_names([f.relpath for f in records])
    protos = []
    for f, path_name, stem_name in zip(records, path_names, stem_names, strict=True):
        fmt = image_formats.BY_EXTENSION.get(_extension(f.path), Unreadable(indexed=False))
        one_record = isinstance(fmt, ImageFile | Unreadable)
        proto = Source(
            uri=storage.to_uri(fs, f.path),
            path=f.path,
            name=path_name if one_record else stem_name,
            format=fmt,
            num_records=1,
            stamp=f.stamp,
        )
        if isinstance(fmt, ImageFile) and (beside := sidecars.get(posixpath.splitext(f.path)[0])):
            proto = replace(
                proto,
                sidecars=tuple((_extension(s.path), s.path) for s in beside),
                stamp="|".join([f.stamp, *(s.stamp for s in beside)]),  # a new caption redoes the image
            )
        if isinstance(fmt, Unreadable):
            proto = unreadable(proto, f"not an image file: {f.relpath}", indexed=False)
        protos.append(proto)
    counted = map_in_tasks(
        functools.partial(_count, options=options, stride=unit_size),
        [p for p in protos if not isinstance(p.format, ImageFile | Unreadable)],
    )
    by_uri = {source.uri: (source, keys) for source, keys in counted}
    sources = [by_uri[p.uri][0] if p.uri in by_uri else p for p in protos]
    sources = _assign_tar_keys(sources, {u: keys for u, (_, keys) in by_uri.items()})
    return PlannedInput(plan_units(sources, unit_size), options)


def _is_sidecar(relpath: str, tar_stems: set[str]) -> bool:
    """Caption / fields files, and a parquet of the same stem as a tar (img2dataset's shard metadata)."""
    ext = _extension(relpath)
    return ext in SIDECAR_EXTENSIONS or (ext == "parquet" and posixpath.splitext(relpath)[0] in tar_stems)


def _sidecars(listed: list[storage.ListedFile]) -> dict[str, list[storage.ListedFile]]:
    """The sidecar files (``.txt``, ``.json``) of each path stem, in listing order."""
    found: dict[str, list[storage.ListedFile]] = {}
    for f in listed:
        found.setdefault(posixpath.splitext(f.path)[0], []).append(f)
    return found


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _assign_tar_keys(sources: list[Source], keys: dict[str, list[str]]) -> list[Source]:
    """Bare sample keys if unique across the job's tars, else ``{tar name}/`` prefixes (see module doc)."""
    tars = [s for s in sources if isinstance(s.format, WebdatasetTar)]
    tar_keys = Counter(k for source in tars for k in keys.get(source.uri, ()))
    if all(n == 1 for n in tar_keys.values()):
        return sources
    out = []
    for source in sources:
        if isinstance(source.format, WebdatasetTar):
            own = keys.get(source.uri, [])
            source = replace(source, key_prefix=f"{source.name}/", index_keys=len(set(own)) != len(own))
        out.append(source)
    return out


def _count(source: Source, *, options: ReadOptions, stride: int) -> tuple[Source, list[str]]:
    """A tar's count and sample keys, or a parquet file's row count (no keys)."""
    if isinstance(source.format, WebdatasetTar):
        return source.format.count_with_keys(source, options, stride)
    return source.format.count(source, options, stride), []
