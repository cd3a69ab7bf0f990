"""Tar shards counted from metadata instead of from their own headers, and read checked against it.

A metadata file (img2dataset's ``{shard}.parquet``, a wids index, a job output's unit markers) says how many
samples a tar holds, and img2dataset's also names them, in order. Planning trusts it and reads no tar byte;
the unit that reads a segment checks the claim: the tar must hold, at the segment's positions, exactly the
samples the metadata lists there (the same keys, when it names them), and the tar's last segment must end
where the metadata says the tar ends. A segment whose tar disagrees is not read at all: each of its planned
records is an error row naming the disagreement, so a record is never lost or shifted onto another's key.
(Re-planning at read time could not keep the unit's record count, which resume and the accounting rely on;
the error tells the user to fix or delete the metadata, after which planning scans the tar.)

Without byte offsets, a segment that starts inside a tar finds its first sample by walking the member headers
from the start with bounded reads (``ranged``), checking every key it passes against the metadata.
:class:`IndexedTar` is the format of tars counted from a wids index or a job output's markers (counts only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from pipelines import storage
from pipelines.readers.formats import unreadable
from pipelines.readers.image_formats import (
    IMAGE_EXTENSIONS,
    kept_column,
    positional_keys,
    sample_key,
    samples_table,
)
from pipelines.readers.plan import ReadOptions, Source
from pipelines.readers.ranged import open_for_headers
from pipelines.readers.tables import slice_table
from pipelines.readers.tar_keys import KeyDigest
from pipelines.readers.webdataset_tars import SampleRecord, TarDamage, TarSample, read_sample, scan_tar
from unidiffuser.locations import describe_error


def read_checked(
    source: Source,
    start: int,
    stop: int,
    options: ReadOptions,
    *,
    expected: Sequence[str] | None,
    claim: str,
) -> pa.Table:
    """Samples ``[start, stop)`` of a tar planned from ``claim`` (the metadata, for messages), checked
    against it (``expected``: the sample keys it lists, or None when it gives a count only); a disagreement
    makes every record of the slice an error row (see the module doc)."""
    fs, _ = storage.open_filesystem(source.uri, options.storage_options)
    with open_for_headers(fs, source.path, source.size) as f:
        offset, problem = _locate(f, start, expected, claim)
    keys: list[str] = []
    read: list[SampleRecord] = []
    if problem is None:
        with fs.open(source.path, "rb") as f:
            samples = scan_tar(f, offset)
            for index in range(start, stop):
                item = next(samples, None)
                problem = _disagreement(item, index, expected, claim, source.num_records)
                if problem is not None:
                    break
                assert isinstance(item, TarSample)
                keys.append(sample_key(source, item.key, index))
                read.append(
                    read_sample(
                        item, image_extensions=IMAGE_EXTENSIONS, with_fields=bool(options.keep_fields)
                    )
                )
            if problem is None and stop == source.num_records:
                problem = _beyond_end(next(samples, None), claim, source.num_records)
    if problem is None:
        return samples_table(source, keys, read, options)
    return disagreement_rows(source, start, stop, options, expected, f"{problem} ({claim})")


def disagreement_rows(
    source: Source,
    start: int,
    stop: int,
    options: ReadOptions,
    expected: Sequence[str] | None,
    problem: str,
) -> pa.Table:
    """Every planned record of ``[start, stop)`` as an error row naming ``problem``."""
    if expected is not None and len(expected) >= stop:
        keys = [sample_key(source, expected[i], i) for i in range(start, stop)]
    else:
        keys = positional_keys(source, start, stop)
    reason = (
        f"{source.uri} does not match the metadata it was planned from: {problem}; the tar's records in "
        "this slice are not read (fix or delete the metadata and re-run: planning then scans the tar)"
    )
    return slice_table(keys, source.uri, errors=reason, metadata=kept_column(options, [None] * len(keys)))


def _locate(f: Any, start: int, expected: Sequence[str] | None, claim: str) -> tuple[int, str | None]:
    """The header offset of sample ``start``, walking headers from the start and checking the keys passed."""
    if start == 0:
        return 0, None
    index = -1
    for index, item in enumerate(scan_tar(f, 0)):
        if isinstance(item, TarDamage):
            return 0, f"{item.reason} before sample {start}"
        if expected is not None and item.key != expected[index]:
            return 0, f"sample {index} is {item.key!r} in the tar but {expected[index]!r} in the metadata"
        if index == start:
            return item.offset, None
    return 0, f"the tar holds {index + 1} samples, the metadata more than {start}"


def _disagreement(
    item: TarSample | TarDamage | None, index: int, expected: Sequence[str] | None, claim: str, planned: int
) -> str | None:
    if item is None:
        return f"the tar holds {index} samples, the metadata {planned}"
    if isinstance(item, TarDamage):
        return f"{item.reason} at sample {index} of the {planned} the metadata lists"
    if expected is not None and item.key != expected[index]:
        return f"sample {index} is {item.key!r} in the tar but {expected[index]!r} in the metadata"
    return None


def _beyond_end(item: TarSample | TarDamage | None, claim: str, planned: int) -> str | None:
    if item is None:
        return None
    if isinstance(item, TarDamage):
        return f"the tar is damaged after the {planned} samples the metadata lists: {item.reason}"
    return f"the tar holds more than the {planned} samples the metadata lists (next: {item.key!r})"


@dataclass(frozen=True)
class IndexedTar:
    """A tar whose sample count comes from a wids index (``nsamples``) or from the unit marker of the job
    output that wrote it (``marker``: its ``written`` records are the tar's samples); keys are the tar's own,
    declared unique (see ``tar_keys``)."""

    claim: str  # "wids index URI" / "job output marker URI", for messages
    nsamples: int | None = None
    marker: str | None = None  # path of ``_units/{u}.json``

    @property
    def name(self) -> str:
        return "indexed tar"

    def count(self, source: Source, options: ReadOptions, stride: int) -> Source:
        return self.count_with_digest(source, options, stride)[0]

    def count_with_digest(
        self, source: Source, options: ReadOptions, stride: int
    ) -> tuple[Source, KeyDigest]:
        count = self.nsamples
        if self.marker is not None:
            try:
                fs, _ = storage.open_filesystem(source.uri, options.storage_options)
                count = int(json.loads(storage.read_bytes(fs, self.marker))["written"])
            except Exception as exc:
                reason = f"cannot read the count of {source.uri} from {self.claim}: {describe_error(exc)}"
                return unreadable(source, reason, indexed=False), KeyDigest()
        assert count is not None
        counted = replace(source, num_records=count, planned_from=self.claim)
        return counted, KeyDigest(count=count, declared=True)

    def planned_keys(self, source: Source, start: int, stop: int) -> list[str]:
        return positional_keys(source, start, stop)

    def read(self, source: Source, start: int, stop: int, options: ReadOptions) -> pa.Table:
        return read_checked(source, start, stop, options, expected=None, claim=self.claim)
