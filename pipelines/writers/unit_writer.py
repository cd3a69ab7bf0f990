"""Write one unit (one block of records) to every selected output format, then commit it.

Layout under ``OutputSpec.uri`` (``{u}`` is the unit id zero-padded to 5 digits):

    shards/{u}.parquet                      format "parquet": written records (parquet_shards.SHARD_SCHEMA)
    shards/{u}.tar                          format "webdataset": img2dataset layout (webdataset_shards)
    shards/{u}_stats.json                   with either shard format: img2dataset-style counts
    embeddings/img_emb/img_emb_{u}.npy      format "embeddings": clip-retrieval layout (embeddings)
    embeddings/text_emb/text_emb_{u}.npy
    embeddings/metadata/metadata_{u}.parquet
    rejected/{u}.parquet                    records the filter rejected (only when there are some)
    errors/{u}.parquet                      records some stage could not process (only when there are some)
    _units/{u}.json                         commit marker with the unit's counts, written last (commit)

Every file is written whole (``storage.write_bytes``), the old marker is removed before a rewrite and the
new one written last, so a unit is either committed with all its files or not committed. Rewriting a
unit writes the same names and removes every other name a unit may have (an empty errors file, a format
no longer selected), so it is idempotent. ``retire_unit`` removes a unit that is no longer in the plan.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines import records as r
from pipelines import storage
from pipelines.writers import commit, embeddings, parquet_shards, webdataset_shards
from pipelines.writers.encode import EncodedImage, encode_image, image_format, source_image

FORMATS = ("parquet", "webdataset", "embeddings")
SHARDS_DIR = "shards"
EMBEDDINGS_DIR = "embeddings"
REJECTED_DIR = "rejected"
ERRORS_DIR = "errors"


@dataclass(frozen=True)
class OutputSpec:
    """Where and how a job's units are written."""

    uri: str
    formats: tuple[str, ...] = ("parquet",)
    image_format: str = "jpg"  # jpg, png or webp
    quality: int = 95  # JPEG / WebP quality
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # of the job that writes (recorded in each marker; see resume)
    unit_inputs: Mapping[int, str] = field(default_factory=dict)  # unit -> ``Unit.input_hash`` (ditto)

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"output formats must be a non-empty subset of {FORMATS}, got {self.formats}")
        object.__setattr__(self, "image_format", image_format(self.image_format))
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {self.quality}")


def write_unit(batch: pd.DataFrame, *, output: OutputSpec) -> dict[str, Any]:
    """Write the unit held by ``batch`` (all rows share one ``unit``) and commit it; returns its marker.

    All files are built in memory first (a bad record fails the unit before anything is touched), then
    the old marker is removed, the files are written whole, and the new marker is written last.
    """
    unit = _unit_of(batch)
    ok, rejected, errored = _split([_clean_row(row) for row in batch.to_dict("records")])
    for row in ok + rejected:
        _encode(row, output)
    counts = _counts(unit, ok, rejected, errored)
    files = _unit_files(commit.unit_name(unit), ok, rejected, errored, counts, output)

    fs, root = storage.open_filesystem(output.uri, output.storage_options)
    commit.remove_marker(fs, root, unit)
    for relpath, data in files.items():
        if data is None:
            storage.remove_file(fs, storage.join(root, relpath))
        else:
            storage.write_bytes(fs, storage.join(root, relpath), data)
    marker = counts | {
        "files": [relpath for relpath, data in files.items() if data is not None],
        "fingerprint": output.fingerprint,
        "input": output.unit_inputs.get(unit),
    }
    commit.write_marker(fs, root, unit, marker)
    return marker


def retire_unit(uri: str, unit: int, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove ``unit`` from the output: its marker first (so it is never half-committed), then every file
    a unit may have. For units a re-planned job no longer has (e.g. after a change of shard size)."""
    fs, root = storage.open_filesystem(uri, storage_options)
    commit.remove_marker(fs, root, unit)
    for relpath in UnitPaths.of(commit.unit_name(unit)).all():
        storage.remove_file(fs, storage.join(root, relpath))


@dataclass(frozen=True)
class UnitPaths:
    """Every relative path a unit may have, in any output format (the commit marker excepted)."""

    parquet: str
    tar: str
    stats: str
    img_emb: str
    text_emb: str
    metadata: str
    rejected: str
    errors: str

    @classmethod
    def of(cls, name: str) -> UnitPaths:
        return cls(
            parquet=f"{SHARDS_DIR}/{name}.parquet",
            tar=f"{SHARDS_DIR}/{name}.tar",
            stats=f"{SHARDS_DIR}/{name}_stats.json",
            img_emb=f"{EMBEDDINGS_DIR}/img_emb/img_emb_{name}.npy",
            text_emb=f"{EMBEDDINGS_DIR}/text_emb/text_emb_{name}.npy",
            metadata=f"{EMBEDDINGS_DIR}/metadata/metadata_{name}.parquet",
            rejected=f"{REJECTED_DIR}/{name}.parquet",
            errors=f"{ERRORS_DIR}/{name}.parquet",
        )

    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


def _split(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """(ok, rejected, errored) rows; rejected and errored rows carry their final ``reason``."""
    outcome: dict[r.Status, list[dict]] = {status: [] for status in r.Status}
    for row in rows:
        status, reason = _outcome(row)
        outcome[status].append(row if status == r.Status.OK else row | {r.REASON: reason})
    return outcome[r.Status.OK], outcome[r.Status.REJECTED], outcome[r.Status.ERROR]


def _counts(unit: int, ok: list[dict], rejected: list[dict], errored: list[dict]) -> dict[str, Any]:
    rejected_reasons = Counter(row[r.REASON] for row in rejected)
    error_reasons = Counter(row[r.REASON] for row in errored)
    return {
        "unit": unit,
        "records": len(ok) + len(rejected) + len(errored),
        "written": len(ok),
        "rejected": len(rejected),
        "errored": len(errored),
        "reasons": dict(rejected_reasons + error_reasons),
        "rejected_reasons": dict(rejected_reasons),
        "error_reasons": dict(error_reasons),
    }


def _unit_files(
    name: str,
    ok: list[dict],
    rejected: list[dict],
    errored: list[dict],
    counts: dict[str, Any],
    output: OutputSpec,
) -> dict[str, bytes | None]:
    """Every path a unit may have, with its bytes or None for "must not exist" (an empty errors file, a
    format not selected): a rewrite never leaves a file of another configuration behind."""
    paths = UnitPaths.of(name)
    files: dict[str, bytes | None] = dict.fromkeys(paths.all())
    members = webdataset_shards.member_names([row[r.KEY] for row in ok])
    if "parquet" in output.formats:
        table = parquet_shards.rows_table(ok, parquet_shards.SHARD_SCHEMA)
        files[paths.parquet] = parquet_shards.parquet_bytes(table)
    if "webdataset" in output.formats:
        files[paths.tar] = webdataset_shards.tar_bytes(ok, members)
    if {"parquet", "webdataset"} & set(output.formats):
        stats = webdataset_shards.stats(
            unit=counts["unit"],
            records=counts["records"],
            written=counts["written"],
            rejected=counts["rejected"],
            errored=counts["errored"],
            reasons=counts["reasons"],
        )
        files[paths.stats] = json.dumps(stats, indent=1).encode()
    if "embeddings" in output.formats:
        files |= _embedding_files(paths, name, ok, members, output)
    files[paths.rejected] = _table_bytes(rejected, parquet_shards.REJECTED_SCHEMA)
    files[paths.errors] = _table_bytes(errored, parquet_shards.ERRORS_SCHEMA)
    return files


def _unit_of(batch: pd.DataFrame) -> int:
    if batch.empty:
        raise ValueError("write_unit got an empty batch: a unit always holds at least one record")
    units = pd.unique(batch[r.UNIT])
    if len(units) != 1:
        raise ValueError(f"a batch must hold exactly one unit, got units {sorted(int(u) for u in units)}")
    return int(units[0])


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values: NaN/NA become None, numpy scalars become Python scalars, params a JSON string."""
    clean = {}
    for name, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            value = None
        clean[name] = value
    params = clean.get(r.PARAMS)
    if params is not None and not isinstance(params, str):
        clean[r.PARAMS] = json.dumps(params, sort_keys=True, default=str)
    return clean


def _outcome(row: Mapping[str, Any]) -> tuple[r.Status, str | None]:
    """Where a record ends: its status and reason (every record ends somewhere)."""
    status = row.get(r.STATUS)
    reason = row.get(r.REASON)
    if status is None:
        read_error = row.get(r.READ_ERROR)
        return r.Status.ERROR, read_error or reason or "no status set by any stage"
    try:
        status = r.Status(status)
    except ValueError:
        return r.Status.ERROR, f"unknown status {status!r}"
    if status == r.Status.OK:
        return status, None
    return status, reason or f"{status.value} without a reason"


def _encode(row: dict[str, Any], output: OutputSpec) -> None:
    """The row's image columns: from the kept input file if there is one, else from its output pixels."""
    source, pixels = row.get(r.SOURCE_IMAGE), row.get(r.OUT_PIXELS)
    image: EncodedImage | None = None
    if source is not None:
        image = source_image(source, output.image_format, output.quality)
    elif pixels is not None:
        image = encode_image(pixels, output.image_format, output.quality)
    row[r.IMAGE] = image.data if image else None
    row[r.IMAGE_FORMAT] = image.format if image else None
    row[r.WIDTH] = image.width if image else None
    row[r.HEIGHT] = image.height if image else None


def _embedding_files(
    paths: UnitPaths, name: str, ok: list[dict], members: list[str], output: OutputSpec
) -> dict[str, bytes | None]:
    """clip-retrieval files; ``image_path`` is ``{u}.tar/{member}.{ext}`` when the tar holds the image."""
    img = embeddings.embedding_matrix(ok, r.IMAGE_EMBEDDING) if ok else None
    text = embeddings.embedding_matrix(ok, r.TEXT_EMBEDDING) if ok else None
    in_tar = "webdataset" in output.formats
    image_paths = [
        f"{name}.tar/{member}.{row[r.IMAGE_FORMAT]}"
        if in_tar and row.get(r.IMAGE) is not None
        else row[r.KEY]
        for row, member in zip(ok, members, strict=True)
    ]
    metadata = embeddings.metadata_table(ok, image_paths) if img is not None or text is not None else None
    return {
        paths.img_emb: None if img is None else embeddings.npy_bytes(img),
        paths.text_emb: None if text is None else embeddings.npy_bytes(text),
        paths.metadata: None if metadata is None else parquet_shards.parquet_bytes(metadata),
    }


def _table_bytes(rows: list[dict], schema: pa.Schema) -> bytes | None:
    """A parquet file of ``rows``, or None (no file) when there are none."""
    return parquet_shards.parquet_bytes(parquet_shards.rows_table(rows, schema)) if rows else None
