"""Prompt inputs: list a file, folder (recursive) or glob of prompt files and plan them into units.

Each file is read by the format of its extension (``prompt_formats``); any other file in a folder is one error
record ("unsupported prompt file extension"), and so is a file that cannot be parsed at all. Keys are
``{name}-{index:09d}`` where ``name`` is the file's stem, or (only when two input files share a stem) its
relative path without extension, or its relative path (see ``naming.unique_names``).
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Mapping, Sequence

import ray.data

from pipelines import storage
from pipelines.readers import prompt_formats
from pipelines.readers.formats import Unreadable, unreadable
from pipelines.readers.naming import unique_names
from pipelines.readers.parallel import map_in_tasks
from pipelines.readers.plan import PlannedInput, ReadOptions, Source, plan_units


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
    options = ReadOptions(dict(storage_options or {}), field=field, keep_fields=tuple(keep_fields))
    fs, path = storage.open_filesystem(uri, options.storage_options)
    files = storage.list_files(fs, path)
    names = unique_names([f.relpath for f in files])
    protos = []
    for f, name in zip(files, names, strict=True):
        ext = posixpath.splitext(f.path)[1].lower()
        proto = Source(
            uri=storage.to_uri(fs, f.path),
            path=f.path,
            name=name,
            format=prompt_formats.BY_EXTENSION.get(ext, Unreadable(indexed=True)),
            num_records=0,
            stamp=f.stamp,
        )
        if ext not in prompt_formats.BY_EXTENSION:
            wanted = ", ".join(prompt_formats.BY_EXTENSION)
            proto = unreadable(proto, f"unsupported prompt file extension {ext or '(none)'} (expected one of "
                               f"{wanted})", indexed=True)  # fmt: skip
        protos.append(proto)
    sources = map_in_tasks(functools.partial(_count, options=options, stride=unit_size), protos)
    return PlannedInput(plan_units(sources, unit_size), options)


def _count(source: Source, *, options: ReadOptions, stride: int) -> Source:
    return source.format.count(source, options, stride)
