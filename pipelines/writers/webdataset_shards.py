"""Webdataset: a unit's tar shard in img2dataset layout (format ``webdataset``), and img2dataset-style stats.

Each written record is one sample: ``{name}.{jpg|png|webp}`` (when it has an image), ``{name}.txt`` (the
``text`` column, when set) and ``{name}.json`` (metadata, always). ``name`` is the record key made safe
for webdataset, which splits a member name at the first ``.`` of its basename: dots become ``_``, a
leading ``/`` is dropped, and a repeat within the shard gets ``_1``, ``_2``... The exact key is in the json.

The ``.json`` holds the input's own fields (``input.keep_fields``: img2dataset's ``url``, ``caption``,
``similarity``, ...) at the top level under their own names, as img2dataset writes them, and ours beside
them under names of their own (``prompt``, ``source_caption``, ``generated_caption``, ``clip_score``, ...);
where a kept field shares a name with one of ours (``key``, ``width``, ``height``, ``status``), ours is at
the top level and the input's value stays in ``metadata``, which always holds the kept fields as read.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import records as r
from pipelines.writers.commit import UnitCommit
from pipelines.writers.formats import OutputSpec, UnitRows

METADATA_FIELDS = (
    r.KEY,
    r.INPUT_KEY,
    r.SAMPLE,
    r.SOURCE,
    r.MODE,
    r.PROMPT,
    r.SOURCE_CAPTION,
    r.GENERATED_CAPTION,
    r.TEXT,
    r.PROMPT_USED,
    r.FLAGS,
    r.SYNTHETIC,
    r.PHASH,
    r.CLIP_SCORE,
    r.SEED,
    r.WIDTH,
    r.HEIGHT,
    r.IMAGE_FORMAT,
    r.MODEL_ID,
    r.PARAMS,
    r.METADATA,
)


def member_names(keys: Sequence[str]) -> list[str]:
    """Webdataset-safe, shard-unique member base names for ``keys`` (see module doc)."""
    names: list[str] = []
    seen: set[str] = set()
    for key in keys:
        base = key.replace(".", "_").lstrip("/") or "_"
        name, n = base, 0
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def sample_metadata(row: Mapping[str, Any], scores: Sequence[str] = ()) -> dict[str, Any]:
    """The ``.json`` member of a sample (see the module doc); ``params`` and ``metadata`` are embedded as
    objects when JSON."""
    ours = {name: row.get(name) for name in METADATA_FIELDS} | {c: row.get(c) for c in scores}
    for name in (r.PARAMS, r.METADATA):
        value = ours.get(name)
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                ours[name] = json.loads(value)
    metadata = ours[r.METADATA]
    kept: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    return {**kept, **ours, "status": "success"}


# Members get a fixed timestamp so that the same records always give byte-identical shards (resume, re-runs).
MEMBER_MTIME = 946_684_800  # 2000-01-01T00:00:00Z


def tar_bytes(rows: Sequence[Mapping[str, Any]], names: Sequence[str], scores: Sequence[str] = ()) -> bytes:
    """A complete tar (with its end-of-archive marker) holding one sample per row."""
    buffer = io.BytesIO()
    now = MEMBER_MTIME
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row, name in zip(rows, names, strict=True):
            if row.get(r.IMAGE) is not None:
                _add(tar, f"{name}.{row[r.IMAGE_FORMAT]}", row[r.IMAGE], now)
            if row.get(r.TEXT) is not None:
                _add(tar, f"{name}.txt", row[r.TEXT].encode("utf-8"), now)
            _add(
                tar,
                f"{name}.json",
                json.dumps(sample_metadata(row, scores), ensure_ascii=False).encode("utf-8"),
                now,
            )
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def stats(commit: UnitCommit, *, start_time: float, end_time: float) -> dict[str, Any]:
    """img2dataset's shard stats (``count``, ``successes``, ``failed_to_download``, ``failed_to_resize``,
    ``start_time``, ``end_time``, ``status_dict``) and ours (``failed_to_process``, ``rejected``). Records
    the reader could not produce count as failed downloads, images that could not be decoded as failed
    resizes, every other error as failed to process; the times are when the unit's preprocessing began and
    when its files were ready."""
    errors = commit.error_reasons
    read = sum(n for reason, n in errors.items() if reason.startswith("read:"))
    decode = sum(n for reason, n in errors.items() if reason.startswith("input:") and "image" in reason)
    reasons = commit.reasons
    return {
        "unit": commit.unit,
        "count": commit.records,
        "successes": commit.written,
        "failed_to_download": read,
        "failed_to_resize": decode,
        "failed_to_process": commit.errored - read - decode,
        "rejected": commit.rejected,
        "start_time": start_time,
        "end_time": end_time,
        "status_dict": {"success": commit.written, **reasons} if commit.written else dict(reasons),
    }


WEBDATASET_DIR = "webdataset"


class WebdatasetShards:
    """Format ``webdataset``: ``webdataset/{u}.tar``, one sample per written record (see the module doc); the
    folder holds nothing else, so any webdataset reader can be pointed at it."""

    name = "webdataset"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{WEBDATASET_DIR}/{unit}.tar",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        return {path: tar_bytes(rows.ok, rows.member_names, output.score_columns)}
