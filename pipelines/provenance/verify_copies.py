"""The copies of each record's image in a job output agree: the shard formats (``parquet/``, ``webdataset/``)
hold the same bytes of a written record, each once, and a record is written or rejected, never both.

Checked one unit at a time (``job_shards`` lists a unit's shards side by side), so what is kept is one unit's
digests, whatever the size of the output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pipelines import records as r
from pipelines.provenance.verify_targets import ImageItem

SHARD_FORMAT_FOLDERS = ("parquet", "webdataset")
"""The folders that hold the written records, one copy each."""


@dataclass(frozen=True)
class _Copy:
    source: str
    digest: bytes


@dataclass
class ImageCopies:
    """Feed every image of a job output (``add``, in ``job_shards`` order), then read ``finish()``'s problems."""

    problems: list[str] = field(default_factory=list)
    _unit: int | None = None
    _copies: dict[str, dict[str, _Copy]] = field(default_factory=dict)

    def add(self, item: ImageItem) -> None:
        """Note one image with its row (a lone image, without a row, has no copies to compare)."""
        if item.row is None:
            return
        if item.unit != self._unit:
            self._compare_unit()
            self._unit = item.unit
        folder = item.source.split("/", 1)[0]
        key = str(item.row[r.KEY])
        copies = self._copies.setdefault(key, {})
        if folder in copies:
            self.problems.append(
                f"record {key} has two images in {folder}/: {copies[folder].source}, {item.source}"
            )
            return
        copies[folder] = _Copy(item.source, hashlib.sha256(item.data).digest())

    def finish(self) -> list[str]:
        """Every disagreement found, one line each naming the record and the files."""
        self._compare_unit()
        return self.problems

    def _compare_unit(self) -> None:
        folders = {folder for copies in self._copies.values() for folder in copies}
        for key, copies in self._copies.items():
            written = [copies[f] for f in SHARD_FORMAT_FOLDERS if f in copies]
            if not written:
                continue
            if "rejected" in copies:
                self.problems.append(
                    f"record {key} is both written ({written[0].source}) and rejected ({copies['rejected'].source})"
                )
            if len({c.digest for c in written}) > 1:
                self.problems.append(
                    f"record {key}: its image in {written[1].source} is not the one in {written[0].source} "
                    "(the copies' bytes differ)"
                )
            for folder in SHARD_FORMAT_FOLDERS:
                if folder in folders and folder not in copies:
                    self.problems.append(
                        f"record {key} has an image in {written[0].source} but none in {folder}/"
                    )
        self._copies = {}
