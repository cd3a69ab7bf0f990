"""wids shard indexes as planning metadata: ``{"__kind__": "wids-shard-index-v1", "shardlist": [{"url",
"nsamples", ...}]}`` (the format ``wids.ShardListDataset`` reads; ``widsindex create`` writes one).

A shard's ``url`` is absolute (``s3://...``, ``/...``) or relative to the index file's folder, as wids
resolves it. Planning takes each listed tar's sample count from its ``nsamples`` (``planned_tars.IndexedTar``)
and reads no tar byte; the count is checked when the tar is read.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from fsspec import AbstractFileSystem

from pipelines import storage

WIDS_KIND = "wids-shard-index-v1"
MAX_INDEX_BYTES = 64 << 20  # a root-level .json larger than this is not opened to look for an index


@dataclass(frozen=True)
class WidsIndex:
    """One index: its URI and the sample count of each shard, by the shard's path on the filesystem."""

    uri: str
    nsamples: dict[str, int]


def parse_index(fs: AbstractFileSystem, path: str, data: bytes) -> WidsIndex | None:
    """The index ``data`` (the file at ``path``) describes, or None when it is not a wids shard index."""
    try:
        index = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(index, dict) or index.get("__kind__") != WIDS_KIND:
        return None
    folder = posixpath.dirname(path)
    counts: dict[str, int] = {}
    for entry in index.get("shardlist", []):
        url, n = entry.get("url"), entry.get("nsamples")
        if not isinstance(url, str) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"{storage.to_uri(fs, path)}: shard entry {entry!r} needs a url and nsamples >= 0"
            )
        if "://" in url or url.startswith("/"):
            shard = fs._strip_protocol(url)  # noqa: SLF001 - fsspec's own way to turn a URL into a path
        else:
            shard = posixpath.normpath(posixpath.join(folder, url))
        counts[shard] = n
    return WidsIndex(storage.to_uri(fs, path), counts)


def find_indexes(fs: AbstractFileSystem, candidates: Sequence[storage.ListedFile]) -> list[WidsIndex]:
    """The wids indexes among ``candidates`` (.json files that may be one); others are left alone."""
    found = []
    for f in candidates:
        if f.size is not None and f.size > MAX_INDEX_BYTES:
            continue
        index = parse_index(fs, f.path, storage.read_bytes(fs, f.path))
        if index is not None:
            found.append(index)
    return found
