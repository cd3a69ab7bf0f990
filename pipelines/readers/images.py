"""Image inputs: list a file, folder (recursive) or glob of images, webdataset tars and parquet files, and plan
them into units (the formats are in ``image_formats``; the metadata planning can use instead of the files:
``img2dataset``, ``wids_index``, ``job_output``, ``planned_tars``).

- sidecars are not records of their own: ``.txt`` and ``.json`` files, and img2dataset's per-shard metadata
  (``{shard}.parquet`` beside ``{shard}.tar`` or the folder ``{shard}/``). Nor are names starting with ``.``
  or ``_``.
- anything else is one record with ``read_error`` "not an image file: ..." so nothing is silently dropped.
- a tar is counted, without reading it, from the first metadata that covers it: the unit marker of the job
  output it belongs to, a wids index listed beside it (or given as ``input.uri``), img2dataset's metadata
  parquet; else by scanning its member headers with bounded ranged reads.

Keys (all dot-free, see ``naming``): an image file's relative path without extension (with extension when
two images differ only by it; img2dataset's ``key``, the file stem, inside an img2dataset shard folder); a
tar sample's key, or an img2dataset parquet row's ``key``, if no other sample of the job has it, else
``{source name}/{key}`` for every keyed source of the job (plus ``-{index:09d}`` in a source that repeats a
key itself; decided from per-source digests, see ``tar_keys``); ``{file stem}-{row:09d}`` for other parquet.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import replace

import ray.data
from fsspec import AbstractFileSystem

from pipelines import storage
from pipelines.readers import image_formats
from pipelines.readers.formats import InputFormat, SampleKeyed, Unreadable, unreadable
from pipelines.readers.image_formats import ImageFile, ParquetImages, WebdatasetTar
from pipelines.readers.img2dataset import (
    Img2datasetListing,
    Img2datasetParquet,
    Img2datasetTar,
    read_shard_metadata,
)
from pipelines.readers.job_output import JobOutput
from pipelines.readers.naming import unique_names
from pipelines.readers.parallel import map_in_tasks
from pipelines.readers.plan import PlannedInput, ReadOptions, Source, excluded_entries, plan_units
from pipelines.readers.planned_tars import IndexedTar
from pipelines.readers.tar_keys import KeyDigest, needs_prefixes, shared_key
from pipelines.readers.wids_index import WidsIndex, find_indexes, parse_index

SIDECAR_EXTENSIONS = ("txt", "json")
KEYED_FORMATS = (WebdatasetTar, Img2datasetTar, IndexedTar, Img2datasetParquet)

log = logging.getLogger(__name__)


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
    """List the image inputs under ``uri``, count tar samples and parquet rows in Ray tasks (from metadata
    where there is some, see the module doc), decide tar keys and plan units."""
    options = ReadOptions(
        dict(storage_options or {}),
        field=column,
        caption_field=caption_column,
        keep_fields=tuple(keep_fields),
    )
    fs, path = storage.open_filesystem(uri, options.storage_options)
    listed, indexes = _listing(fs, path)
    output = JobOutput.find(fs, path)
    img2dataset = Img2datasetListing.of(listed)
    if output is not None:
        records = output.records(listed)
    else:
        tar_stems = tar_stems_of(listed)
        records = [f for f in listed if not _is_sidecar(f.relpath, tar_stems, img2dataset)]
        if indexes and path.endswith(".json"):  # the index is the input: exactly its shards
            named = {shard for index in indexes for shard in index.nsamples}
            records = [f for f in records if f.path in named]
            missing = sorted(named - {f.path for f in records})
            if missing:
                raise FileNotFoundError(
                    f"{indexes[0].uri} names {len(missing)} shard(s) that do not exist, e.g. {missing[0]}"
                )
    if not records:
        raise FileNotFoundError(f"no image inputs under {uri} (only sidecar files)")
    sidecars = _sidecars([f for f in listed if _extension(f.path) in SIDECAR_EXTENSIONS])
    in_shard_folder = [img2dataset.metadata_of(f.relpath) is not None for f in records]
    path_names = unique_names([f.relpath for f in records], use_stem=in_shard_folder)
    stem_names = unique_names([f.relpath for f in records])
    nsamples = {shard: (index, n) for index in indexes for shard, n in index.nsamples.items()}
    protos = []
    for f, path_name, stem_name in zip(records, path_names, stem_names, strict=True):
        fmt = _format(f, output, nsamples, img2dataset, fs)
        one_record = isinstance(fmt, ImageFile | Unreadable)
        proto = Source(
            uri=storage.to_uri(fs, f.path),
            path=f.path,
            name=path_name if one_record else stem_name,
            format=fmt,
            num_records=1,
            stamp=f.stamp,
            size=f.size,
        )
        if isinstance(fmt, ImageFile) and (beside := sidecars.get(posixpath.splitext(f.path)[0])):
            proto = replace(
                proto,
                sidecars=tuple((_extension(s.path), s.path) for s in beside),
                stamp="|".join([f.stamp, *(s.stamp for s in beside)]),  # a new caption redoes the image
            )
        if isinstance(fmt, Img2datasetTar):
            metadata = img2dataset.metadata_of(f.relpath)
            assert metadata is not None
            proto = replace(proto, sidecars=(("parquet", metadata.path),))
        if isinstance(fmt, Unreadable):
            proto = unreadable(proto, f"not an image file: {f.relpath}", indexed=False)
        protos.append(proto)
    counted = map_in_tasks(
        functools.partial(_count, options=options, stride=unit_size),
        [p for p in protos if not isinstance(p.format, ImageFile | Unreadable)],
    )
    by_uri = {source.uri: (source, digest) for source, digest in counted}
    sources = [by_uri[p.uri][0] if p.uri in by_uri else p for p in protos]
    sources = _assign_keys(sources, {u: digest for u, (_, digest) in by_uri.items()}, options)
    excluded = excluded_entries(sources)
    folder_shards = [m for stem, m in img2dataset.metadata.items() if stem not in tar_stems_of(listed)]
    for counts in map_in_tasks(
        functools.partial(_folder_exclusions, uri=uri, options=options), folder_shards
    ):
        for reason, n in counts.items():
            excluded[reason] = excluded.get(reason, 0) + n
    if excluded:
        log.info("not records, as their metadata says: %s", excluded)
    return PlannedInput(plan_units(sources, unit_size), options, excluded)


def tar_stems_of(listed: Sequence[storage.ListedFile]) -> set[str]:
    """The relative paths without extension of the listed tars."""
    return {posixpath.splitext(f.relpath)[0] for f in listed if _extension(f.relpath) == "tar"}


def _folder_exclusions(metadata: storage.ListedFile, *, uri: str, options: ReadOptions) -> dict[str, int]:
    """What the metadata of an img2dataset ``files``-layout shard lists that is not a file of its folder
    (``uri``: the job's input, whose filesystem the metadata is on)."""
    fs, _ = storage.open_filesystem(uri, options.storage_options)
    return read_shard_metadata(fs, metadata.path, metadata.size).excluded


def _listing(fs: AbstractFileSystem, path: str) -> tuple[list[storage.ListedFile], list[WidsIndex]]:
    """The files to plan from and the wids indexes among them: given an index file, its folder's files."""
    if path.endswith(".json") and fs.isfile(path):
        index = parse_index(fs, path, storage.read_bytes(fs, path))
        if index is None:
            raise ValueError(f"{storage.to_uri(fs, path)} is not a wids shard index (and not an image input)")
        return storage.list_files(fs, posixpath.dirname(path)), [index]
    listed = storage.list_files(fs, path)
    stems = {posixpath.splitext(f.relpath)[0] for f in listed if _extension(f.relpath) != "json"}
    candidates = [
        f
        for f in listed
        if "/" not in f.relpath
        and _extension(f.relpath) == "json"
        and not f.relpath.endswith("_stats.json")
        and posixpath.splitext(f.relpath)[0] not in stems  # not the .json sidecar of a file
    ]
    return listed, find_indexes(fs, candidates)


def _format(
    f: storage.ListedFile,
    output: JobOutput | None,
    nsamples: dict[str, tuple[WidsIndex, int]],
    img2dataset: Img2datasetListing,
    fs: AbstractFileSystem,
) -> InputFormat:
    """How the file is counted and read (see the module doc for which metadata is used first)."""
    ext = _extension(f.path)
    if ext == "tar":
        if output is not None:
            marker = output.marker(f.path)
            return IndexedTar(claim=f"job output marker {storage.to_uri(fs, marker)}", marker=marker)
        if f.path in nsamples:
            index, n = nsamples[f.path]
            return IndexedTar(claim=f"wids index {index.uri}", nsamples=n)
        if (metadata := img2dataset.metadata_of(f.relpath)) is not None:
            return Img2datasetTar(metadata_size=metadata.size)
    if ext == "parquet" and output is not None:
        return Img2datasetParquet(with_status=False)
    return image_formats.BY_EXTENSION.get(ext, Unreadable(indexed=False))


def _is_sidecar(relpath: str, tar_stems: set[str], img2dataset: Img2datasetListing) -> bool:
    """Caption / fields files, and img2dataset's per-shard metadata (a parquet beside a tar or a folder)."""
    ext = _extension(relpath)
    if ext in SIDECAR_EXTENSIONS or img2dataset.is_metadata(relpath):
        return True
    return ext == "parquet" and posixpath.splitext(relpath)[0] in tar_stems


def _sidecars(listed: list[storage.ListedFile]) -> dict[str, list[storage.ListedFile]]:
    """The sidecar files (``.txt``, ``.json``) of each path stem, in listing order."""
    found: dict[str, list[storage.ListedFile]] = {}
    for f in listed:
        found.setdefault(posixpath.splitext(f.path)[0], []).append(f)
    return found


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _assign_keys(sources: list[Source], digests: dict[str, KeyDigest], options: ReadOptions) -> list[Source]:
    """Bare sample keys if unique across the job's keyed sources, else ``{name}/`` prefixes (module doc)."""
    keyed = [s for s in sources if isinstance(s.format, KEYED_FORMATS) and s.uri in digests]
    keyed_digests = [digests[s.uri] for s in keyed]

    def collides(groups: list[list[int]]) -> list[bool]:
        return map_in_tasks(
            functools.partial(_group_collides, options=options), [[keyed[i] for i in g] for g in groups]
        )

    if not needs_prefixes(keyed_digests, collides):
        return sources
    prefixed = {s.uri: replace(s, key_prefix=f"{s.name}/", index_keys=digests[s.uri].repeats) for s in keyed}
    return [prefixed.get(s.uri, s) for s in sources]


def _group_collides(group: list[Source], *, options: ReadOptions) -> bool:
    """Whether two sources of ``group`` share a sample key (runs in a task: the keys never reach the driver)."""
    return shared_key(_keyed(source).sample_keys(source, options) for source in group)


def _keyed(source: Source) -> SampleKeyed:
    if not isinstance(source.format, SampleKeyed):
        raise TypeError(f"{source.uri}: format {source.format.name} has no sample keys")
    return source.format


def _count(source: Source, *, options: ReadOptions, stride: int) -> tuple[Source, KeyDigest]:
    """A keyed source's count and key digest, or a parquet file's row count (no keys); a parquet with
    img2dataset's ``key`` and ``status`` columns is its parquet layout (``Img2datasetParquet``)."""
    if isinstance(source.format, ParquetImages):
        layout = replace(source, format=Img2datasetParquet())
        counted, digest = Img2datasetParquet().count_with_digest(layout, options, stride)
        if not isinstance(counted.format, Unreadable):
            return counted, digest
        return source.format.count(source, options, stride), KeyDigest()
    if isinstance(source.format, KEYED_FORMATS):
        return source.format.count_with_digest(source, options, stride)
    return source.format.count(source, options, stride), KeyDigest()
