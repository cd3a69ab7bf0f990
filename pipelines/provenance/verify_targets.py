"""What ``verify`` reads: a lone image file, one shard of ours (parquet or webdataset tar), or a whole job output,
local or behind any fsspec URI, as the images it holds, each with the row written beside it, and what the job
asked for (``JobContext``, from ``_summary.json`` and the unit markers) where the job is known.

A shard found at its place in a job output (``{root}/parquet/00000.parquet``, ``{root}/webdataset/00000.tar``)
is checked against that job's summary; a lone image never is (an image file carries no pointer to its job).
Targets that cannot be read raise ``VerifyTargetError`` with one line naming them.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines import records as r
from pipelines.writers.commit import UNITS_DIR, UnitCommit
from pipelines.writers.summary import SUMMARY_FILE
from unidiffuser.config import Mode
from unidiffuser.locations import describe_error, open_location, redact

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SHARD_FOLDERS = ("parquet", "rejected", "webdataset")
"""The folders of a job output whose files hold images, in the order they are checked."""
_UNIT_FILE = re.compile(r"^(\d+)\.(parquet|tar|json)$")
_ROW_COLUMNS = (r.KEY, r.MODE, r.PROMPT, r.PROMPT_USED, r.SEED, r.PARAMS, r.MODEL_ID, r.PHASH, r.SYNTHETIC)
TargetKind = Literal["image", "shard", "job"]


class VerifyTargetError(ValueError):
    """The target cannot be read or is none of an image, a shard of ours or a job output."""


@dataclass(frozen=True)
class JobContext:
    """What the job that wrote an output asked for; None where unknown (no summary)."""

    name: str | None = None
    model_version: str | None = None  # model_versions.checkpoint of the summary
    watermark: bool | None = None  # provenance.watermark (for a mode that makes images)
    watermark_method: str = "dwtDctSvd"
    c2pa: bool | None = None  # provenance.c2pa set
    fingerprint: str | None = None  # the summary's
    unit_fingerprints: Mapping[int, str] = field(default_factory=dict)  # from the unit markers

    @property
    def known(self) -> bool:
        """Whether the job's spec is known (a summary was read)."""
        return self.watermark is not None

    def fingerprint_of(self, unit: int | None) -> str | None:
        """The fingerprint of the job that wrote ``unit`` (its marker's, else the summary's)."""
        found = None if unit is None else self.unit_fingerprints.get(unit)
        return found or self.fingerprint


@dataclass(frozen=True)
class ImageItem:
    """One image to verify: its bytes, where it is, and the row written with it (None for a lone file)."""

    data: bytes
    source: str  # the file it is in, relative to the target's root where there is one
    row: Mapping[str, Any] | None
    unit: int | None = None


def target_kind(uri: str, fs: AbstractFileSystem, path: str) -> TargetKind:
    """``image``, ``shard`` or ``job`` by the target's name and what its folder holds."""
    lower = path.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    if lower.endswith((".parquet", ".tar")):
        return "shard"
    root = path.rstrip("/")
    if fs.exists(f"{root}/{SUMMARY_FILE}") or fs.isdir(f"{root}/{UNITS_DIR}"):
        return "job"
    if fs.exists(root):
        raise VerifyTargetError(
            f"{redact(uri)} is neither an image (.jpg .png .webp), a shard (.parquet .tar) nor a job output "
            f"(a folder with {SUMMARY_FILE} or {UNITS_DIR}/)"
        )
    raise VerifyTargetError(f"{redact(uri)} does not exist")


def open_target(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and path of ``uri``; VerifyTargetError when it cannot be reached."""
    try:
        return open_location(uri, storage_options)
    except Exception as error:  # unknown protocol, missing driver, bad options: one line naming the target
        raise VerifyTargetError(f"cannot open {redact(uri)}: {describe_error(error)}") from None


def job_context(fs: AbstractFileSystem, root: str) -> JobContext | None:
    """The context of the job output at ``root``; None when it has no ``_summary.json``. A summary that is not
    one of ours raises VerifyTargetError."""
    path = f"{root.rstrip('/')}/{SUMMARY_FILE}"
    if not fs.exists(path):
        return None
    try:
        summary = json.loads(fs.cat_file(path))
        config = summary.get("config") or {}
        provenance = config.get("provenance") or {}
        mode = Mode((config.get("model") or {}).get("mode", Mode.T2I.value))
    except (ValueError, AttributeError) as error:
        raise VerifyTargetError(f"{redact(path)} is not a job summary: {error}") from None
    versions = summary.get("model_versions") or {}
    return JobContext(
        name=summary.get("name") or config.get("name"),
        model_version=versions.get("checkpoint"),
        watermark=bool(provenance.get("watermark")) and mode.makes_image,
        watermark_method=provenance.get("watermark_method") or "dwtDctSvd",
        c2pa=provenance.get("c2pa") is not None and mode.makes_image,
        fingerprint=summary.get("fingerprint"),
        unit_fingerprints=unit_fingerprints(fs, root),
    )


def unit_fingerprints(fs: AbstractFileSystem, root: str) -> dict[int, str]:
    """unit -> the fingerprint its commit marker records (units without one are left out)."""
    folder = f"{root.rstrip('/')}/{UNITS_DIR}"
    try:
        paths = [p for p in fs.ls(folder, detail=False) if posixpath.basename(p).endswith(".json")]
    except FileNotFoundError:
        return {}
    found: dict[int, str] = {}
    for data in (fs.cat(paths, on_error="return") if paths else {}).values():
        commit = None if isinstance(data, BaseException) else UnitCommit.from_json(data)
        if commit is not None and commit.fingerprint:
            found[commit.unit] = commit.fingerprint
    return found


def shard_job_root(path: str) -> str | None:
    """The job output a shard sits in by its place (``{root}/parquet/00000.parquet``), or None."""
    folder = posixpath.dirname(path.rstrip("/"))
    return posixpath.dirname(folder) if posixpath.basename(folder) in SHARD_FOLDERS else None


def unit_of(path: str) -> int | None:
    """The unit of a shard by its name (``00003.tar`` -> 3), or None."""
    match = _UNIT_FILE.match(posixpath.basename(path))
    return int(match.group(1)) if match else None


def job_shards(fs: AbstractFileSystem, root: str) -> list[str]:
    """The shard files of the job output at ``root`` that may hold images (written, rejected, tars), unit by
    unit: each unit's files side by side, in ``SHARD_FOLDERS`` order."""
    shards: list[tuple[float, int, str]] = []
    for rank, folder in enumerate(SHARD_FOLDERS):
        suffix = ".tar" if folder == "webdataset" else ".parquet"
        try:
            names = fs.ls(f"{root.rstrip('/')}/{folder}", detail=False)
        except FileNotFoundError:
            continue
        for path in names:
            if path.endswith(suffix):
                unit = unit_of(path)
                shards.append((float("inf") if unit is None else unit, rank, path))
    return [path for _, _, path in sorted(shards)]


def relative(path: str, root: str | None) -> str:
    """``path`` relative to ``root`` when under it (``parquet/00000.parquet``), else as given."""
    prefix = None if root is None else root.rstrip("/") + "/"
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


def shard_images(fs: AbstractFileSystem, path: str, source: str) -> Iterator[ImageItem]:
    """The images of one shard (parquet or webdataset tar of ours) with their rows; VerifyTargetError when the
    file cannot be read as one."""
    unit = unit_of(path)
    try:
        if path.endswith(".tar"):
            yield from _tar_images(fs, path, source, unit)
        else:
            yield from _parquet_images(fs, path, source, unit)
    except (OSError, ValueError, tarfile.TarError) as error:
        raise VerifyTargetError(f"cannot read the shard {source}: {describe_error(error)}") from None


def _parquet_images(fs: AbstractFileSystem, path: str, source: str, unit: int | None) -> Iterator[ImageItem]:
    with fs.open(path, "rb") as file:
        shard = pq.ParquetFile(file)
        names = shard.schema_arrow.names
        if r.IMAGE not in names or r.KEY not in names:
            raise ValueError(f"it has no {r.IMAGE!r} or {r.KEY!r} column: not a shard of ours")
        columns = [c for c in (*_ROW_COLUMNS, r.IMAGE) if c in names]
        for batch in shard.iter_batches(batch_size=64, columns=columns):
            for row in batch.to_pylist():
                data = row.pop(r.IMAGE)
                if data is not None:
                    yield ImageItem(data, source, row, unit)


def _tar_images(fs: AbstractFileSystem, path: str, source: str, unit: int | None) -> Iterator[ImageItem]:
    """Samples of a tar in member order: ``{name}.{ext}`` beside ``{name}.json`` (webdataset's grouping)."""
    samples: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as file, tarfile.open(fileobj=file, mode="r|*") as tar:
        for member in tar:
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is None:
                continue
            base, _, ext = posixpath.basename(member.name).partition(".")
            prefix = posixpath.join(posixpath.dirname(member.name), base)
            samples.setdefault(prefix, {})[ext.lower()] = extracted.read()
    for name, members in samples.items():
        image_ext = next((e for e in members if f".{e}" in IMAGE_SUFFIXES), None)
        if image_ext is None:
            continue
        row = _sample_row(members.get("json"), name, source)
        yield ImageItem(members[image_ext], source, row, unit)


def _sample_row(data: bytes | None, name: str, source: str) -> dict[str, Any]:
    if data is None:
        raise ValueError(f"sample {name!r} has an image but no .json: not a shard of ours")
    values = json.loads(data)
    if not isinstance(values, dict) or r.KEY not in values:
        raise ValueError(f"sample {name!r}: its .json holds no {r.KEY!r}: not a shard of ours")
    return {c: values.get(c) for c in _ROW_COLUMNS}


def read_image_file(fs: AbstractFileSystem, path: str, uri: str) -> bytes:
    """The bytes of a lone image file; VerifyTargetError when it cannot be read."""
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        raise VerifyTargetError(f"{redact(uri)} does not exist") from None
    except Exception as error:  # unreachable storage, refused credentials
        raise VerifyTargetError(f"cannot read {redact(uri)}: {describe_error(error)}") from None
    return data
