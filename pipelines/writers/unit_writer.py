"""Write one unit (one block of records) to every selected output format, then commit it.

Layout under ``OutputSpec.uri`` (``{u}`` is the unit id zero-padded to 5 digits), one class per format:

    parquet/{u}.parquet                     format "parquet": written records (parquet_shards.ParquetShards)
    webdataset/{u}.tar                      format "webdataset": img2dataset layout (webdataset_shards)
    embeddings/img_emb/img_emb_{u}.npy      format "embeddings": clip-retrieval layout (embeddings)
    embeddings/text_emb/text_emb_{u}.npy
    embeddings/metadata/metadata_{u}.parquet
    stats/{u}_stats.json                    img2dataset's shard stats (outcomes)
    rejected/{u}.parquet                    records the filter rejected (only when there are some)
    errors/{u}.parquet                      records some stage could not process (only when there are some)
    _units/{u}.keys                         the unit's key hashes (commit)
    _units/{u}.json                         commit marker, written last (commit)

Every file is written whole (``storage.write_bytes``), the old marker is removed before a rewrite and the
new one written last, so a unit is either committed with all its files or not committed. Rewriting a
unit writes the same names and removes every other name a unit may have (an empty errors file, a format
no longer selected), so it is idempotent. ``retire_unit`` removes a unit that is no longer in the plan.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from pipelines import records as r
from pipelines import storage
from pipelines.dedup.phash import phash
from pipelines.writers import commit
from pipelines.writers.embeddings import ClipRetrievalEmbeddings
from pipelines.writers.formats import OutputFormat, OutputSpec, UnitRows
from pipelines.writers.outcomes import ErroredRecords, RejectedRecords, ShardStats
from pipelines.writers.parquet_shards import ParquetShards
from pipelines.writers.shard_image import CaptionImage, shard_image
from pipelines.writers.webdataset_shards import WebdatasetShards, member_names
from unidiffuser.config import Mode, ModeInput

DECISIONS_DIR = "dedup/units"
"""Where the dedup phase records what it decided about each unit (``pipelines.dedup.phase``)."""

SELECTABLE: dict[str, OutputFormat] = {
    f.name: f for f in (ParquetShards(), WebdatasetShards(), ClipRetrievalEmbeddings())
}
"""The formats ``output.formats`` selects from, by name."""
ALWAYS: tuple[OutputFormat, ...] = (ShardStats(), RejectedRecords(), ErroredRecords())
"""What every job writes for each unit."""


def every_path(unit: str) -> tuple[str, ...]:
    """Every path a unit may have in any format, and the dedup phase's decisions about it (which a rewrite of
    the unit makes stale); its commit marker and key hashes excepted."""
    formats = tuple(path for f in (*SELECTABLE.values(), *ALWAYS) for path in f.paths(unit))
    return (*formats, f"{DECISIONS_DIR}/{unit}.json")


def write_unit(
    batch: pd.DataFrame, *, output: OutputSpec, caption_image: CaptionImage = CaptionImage.SOURCE
) -> commit.UnitCommit:
    """Write the unit held by ``batch`` (all rows share one ``unit``) and commit it; returns its commit.

    All files are built in memory first (a bad record fails the unit before anything is touched), then
    the old marker is removed, the files are written whole, and the new marker is written last.
    """
    return commit_unit(unit_rows(batch, output, caption_image), output)


def commit_unit(rows: UnitRows, output: OutputSpec) -> commit.UnitCommit:
    """Write every file of ``rows``' unit in the selected formats and commit it (see ``write_unit``)."""
    files = dict.fromkeys(every_path(rows.name))
    for fmt in (*(SELECTABLE[name] for name in output.formats), *ALWAYS):
        files |= fmt.files(rows, output)
    keys = [row[r.KEY] for row in (*rows.ok, *rows.rejected, *rows.errored)]
    files[commit.keys_path(rows.unit)] = commit.key_hashes(keys).tobytes()

    fs, root = storage.open_filesystem(output.uri, output.storage_options)
    commit.remove_marker(fs, root, rows.unit)
    for relpath, data in files.items():
        if data is None:
            storage.remove_file(fs, storage.join(root, relpath))
        else:
            storage.write_bytes(fs, storage.join(root, relpath), data)
    done = replace(
        rows.commit,
        files=tuple(relpath for relpath, data in files.items() if data is not None),
        fingerprint=output.fingerprint,
        input=output.unit_inputs.get(rows.unit),
    )
    commit.write_marker(fs, root, done)
    return done


def retire_unit(uri: str, unit: int, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove ``unit`` from the output: its marker first (so it is never half-committed), then every file
    a unit may have. For units a re-planned job no longer has (e.g. after a change of shard size)."""
    fs, root = storage.open_filesystem(uri, storage_options)
    commit.remove_marker(fs, root, unit)
    for relpath in (*every_path(commit.unit_name(unit)), commit.keys_path(unit)):
        storage.remove_file(fs, storage.join(root, relpath))


def unit_rows(batch: pd.DataFrame, output: OutputSpec, caption_image: CaptionImage) -> UnitRows:
    """The unit's records split by outcome (rejected and errored ones with their final reason), with the
    image columns of the written and rejected ones encoded."""
    unit = _unit_of(batch)
    rows = [_output_texts(_clean_row(row)) for row in batch.to_dict("records")]
    for row in rows:
        if row.get(r.STATUS) in (r.Status.OK.value, r.Status.REJECTED.value):
            _encode(row, output, caption_image)
    ok, rejected, errored = _split(rows)
    counts = commit.UnitCommit.of(
        unit,
        written=len(ok),
        rejected=[row.get(r.REJECT_RULES) or [row[r.REASON]] for row in rejected],
        errored=[row[r.REASON] for row in errored],
    )
    started = min((row[r.STARTED_AT] for row in rows if row.get(r.STARTED_AT) is not None), default=None)
    finished = time.time()
    return UnitRows(
        unit,
        ok,
        rejected,
        errored,
        counts,
        member_names([row[r.KEY] for row in ok]),
        started_at=finished if started is None else started,
        finished_at=finished,
    )


def _output_texts(row: dict[str, Any]) -> dict[str, Any]:
    """The input's text is written as ``prompt`` for text-input modes and as ``source_caption`` for image
    inputs (a corpus caption is neither a prompt nor a generated caption)."""
    mode = row.get(r.MODE)
    if mode is not None and Mode(mode).input == ModeInput.IMAGE:
        row[r.SOURCE_CAPTION], row[r.PROMPT] = row.get(r.PROMPT), None
    return row


def _split(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """(ok, rejected, errored) rows; rejected and errored rows carry their final ``reason``."""
    outcome: dict[r.Status, list[dict]] = {status: [] for status in r.Status}
    for row in rows:
        status, reason = _outcome(row)
        outcome[status].append(row if status == r.Status.OK else row | {r.REASON: reason})
    return outcome[r.Status.OK], outcome[r.Status.REJECTED], outcome[r.Status.ERROR]


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
        clean[str(name)] = value
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


def _encode(row: dict[str, Any], output: OutputSpec, caption_image: CaptionImage) -> None:
    """The row's image columns, from the one image written with it (see ``shard_image``), marked as generated
    when the model made it (``output.marks``), its pHash, and which of its fields the model made. An image
    that cannot carry its marks makes the row an error row: nothing is written unmarked."""
    mode = Mode(row[r.MODE]) if row.get(r.MODE) else Mode.TEXT
    image = shard_image(row, mode, caption_image, output.image_format, output.quality)
    if image is not None and mode.makes_image and output.marks is not None:
        try:
            image = replace(image, data=output.marks.mark(image.data, image.format, row))
        except ValueError as error:  # MarkingError, or a record field the job cannot describe
            row[r.STATUS], row[r.REASON] = r.Status.ERROR.value, f"provenance: {error}"
            row[r.REJECT_RULES] = None
            image = None
    row[r.IMAGE] = image.data if image else None
    row[r.IMAGE_FORMAT] = image.format if image else None
    row[r.WIDTH] = image.width if image else None
    row[r.HEIGHT] = image.height if image else None
    # the marks change the file, never its pixels: a lossless image is hashed from the pixels it was encoded from
    row[r.PHASH] = None if image is None else phash(image.data if image.pixels is None else image.pixels)
    row[r.SYNTHETIC] = synthetic_fields(mode, has_image=image is not None)


def synthetic_fields(mode: Mode, *, has_image: bool) -> list[str]:
    """The output fields a mode's model made (the others are the input's): the image when it generates one,
    the generated caption when it decodes one, and the paired ``text`` when that is the generated caption."""
    fields = ["image"] if mode.makes_image and has_image else []
    if mode.makes_text:
        fields.append(r.GENERATED_CAPTION)
    if mode.makes_text and mode not in (Mode.T2I, Mode.I2T2I):
        fields.append(r.TEXT)
    return fields
