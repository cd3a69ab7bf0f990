"""A wids shard index of a job output's webdataset shards, for random access (``wids.ShardListDataset``).

``write_wids_index`` writes ``{output}/wids_index.json``::

    {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": ..., "shardlist":
     [{"url": "webdataset/00000.tar", "nsamples": 998, "filesize": 1234567}, ...]}

listing ``webdataset/*.tar`` with their sample counts taken from the unit markers (``_units/{u}.json``:
a tar holds exactly the unit's written records) or, for a tar without a readable marker, from its stats file
(``stats/{u}_stats.json``: ``successes``), never by reading the tars. URLs are relative to the index, as wids
resolves them, so the output folder can be moved or copied whole. The index sits beside ``webdataset/``,
not in it, so that folder keeps holding only shards.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from pipelines import storage
from pipelines.writers.commit import committed_units, unit_name
from pipelines.writers.outcomes import STATS_DIR
from pipelines.writers.webdataset_shards import WEBDATASET_DIR

WIDS_INDEX_FILE = "wids_index.json"
WIDS_KIND = "wids-shard-index-v1"


class WidsIndexError(RuntimeError):
    """A shard whose sample count no marker or stats file gives."""


def write_wids_index(output_uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write the wids index of the job output at ``output_uri`` (see the module doc); returns its URI."""
    fs, root = storage.open_filesystem(output_uri, storage_options)
    folder = storage.join(root, WEBDATASET_DIR)
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        entries = []
    tars = sorted((i["name"], i) for i in entries if i["name"].endswith(".tar"))
    markers = committed_units(output_uri, storage_options)
    written = {f"{WEBDATASET_DIR}/{unit_name(u)}.tar": c.written for u, c in markers.items()}
    shardlist = []
    for path, info in tars:
        relpath = f"{WEBDATASET_DIR}/{posixpath.basename(path)}"
        nsamples = written.get(relpath)
        if nsamples is None:
            nsamples = _stats_successes(fs, root, posixpath.splitext(posixpath.basename(path))[0])
        if nsamples is None:
            raise WidsIndexError(
                f"{storage.to_uri(fs, path)}: no unit marker or stats file gives its sample count "
                "(is the job finished?)"
            )
        shardlist.append({"url": relpath, "nsamples": nsamples, "filesize": info.get("size")})
    index = {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": posixpath.basename(root.rstrip("/")),
        "shardlist": shardlist,
    }
    path = storage.join(root, WIDS_INDEX_FILE)
    storage.write_bytes_if_changed(fs, path, json.dumps(index, indent=1).encode())
    return storage.to_uri(fs, path)


def _stats_successes(fs: Any, root: str, unit: str) -> int | None:
    try:
        stats = json.loads(storage.read_bytes(fs, storage.join(root, STATS_DIR, f"{unit}_stats.json")))
        return int(stats["successes"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None
