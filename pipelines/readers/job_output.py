"""A job output of this project as the next job's input: its records planned from its unit markers.

An output folder (see ``pipelines.writers.unit_writer``) holds each written record twice, in
``webdataset/{u}.tar`` and in ``parquet/{u}.parquet``, besides stats, rejected and errored records and
embeddings that are not records. Given the output folder (or its ``webdataset/`` or ``parquet/`` folder) as
``input.uri``, a job reads the written records once: from the tars when there are any (each counted from
``_units/{u}.json``, whose ``written`` records are the tar's samples: no tar byte is read at planning),
else from the parquet shards (keyed by their ``key`` column). The output's keys were proven unique when its
summary was written, so they are kept as they are.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from fsspec import AbstractFileSystem

from pipelines import storage

UNITS_DIR = "_units"  # pipelines.writers.commit.UNITS_DIR (readers do not import writers)
RECORD_DIRS = ("webdataset", "parquet")


@dataclass(frozen=True)
class JobOutput:
    """A job output found at or above the listing root."""

    root: str  # the output folder (path on its filesystem)

    @classmethod
    def find(cls, fs: AbstractFileSystem, path: str) -> JobOutput | None:
        """The output whose folder is ``path``, or whose ``webdataset/`` or ``parquet/`` folder it is."""
        path = path.rstrip("/")
        for root in (path, posixpath.dirname(path)):
            if root != path and posixpath.basename(path) not in RECORD_DIRS:
                continue
            if fs.isdir(storage.join(root, UNITS_DIR)):
                return cls(root)
        return None

    def records(self, listed: Sequence[storage.ListedFile]) -> list[storage.ListedFile]:
        """The listed files that hold the output's written records: its tars, else its parquet shards."""
        for folder, ext in (("webdataset", ".tar"), ("parquet", ".parquet")):
            prefix = storage.join(self.root, folder) + "/"
            chosen = [f for f in listed if f.path.startswith(prefix) and f.path.endswith(ext)]
            if chosen:
                return chosen
        return []

    def marker(self, tar_path: str) -> str:
        """The unit marker of ``webdataset/{u}.tar``."""
        unit = posixpath.splitext(posixpath.basename(tar_path))[0]
        return storage.join(self.root, UNITS_DIR, f"{unit}.json")
