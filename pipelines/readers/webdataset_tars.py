"""Webdataset / img2dataset tar shards: samples found by scanning member headers, members read on demand.

A sample is a run of consecutive members sharing a key (the basename up to its first ``.``, as webdataset's
``base_plus_ext`` splits it). Scanning reads headers only, so counting a tar is cheap, and it can start at
any sample's header offset, which is how a unit reads just its slice of a big tar.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.readers.fields import caption_text, json_object

_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_BLOCK = 512


@dataclass
class TarSample:
    """One sample: its key and its members by extension (the first member of each extension)."""

    key: str
    offset: int  # header offset of the sample's first member
    tar: tarfile.TarFile  # to read member data with
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class TarDamage:
    """Where a damaged tar stops yielding samples, and why."""

    reason: str


def scan_tar(f: Any, offset: int) -> Iterator[TarSample | TarDamage]:
    """Samples of a seekable tar from the member header at ``offset``; a damaged tar ends with ``TarDamage``.

    Member data is not read (the caller reads what it needs through ``tar.extractfile``), so counting a
    tar only touches its headers. Damage is: an unreadable header, member data cut short, or an archive
    that ends without its end-of-archive marker (a writer killed mid-shard). The sample being assembled
    when damage is found is not yielded, since it may be missing members.
    """
    f.seek(offset)
    current: TarSample | None = None
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            while (member := tar.next()) is not None:
                match = _WDS_KEY.match(member.name)
                if not member.isfile() or match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = TarSample(key, member.offset, tar)
                current.members.setdefault(ext, member)
            reason = _end_problem(f, tar.offset)
            if reason is None:
                if current is not None:
                    yield current
                return
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    cut = f" (sample {current.key!r} is cut)" if current is not None else ""
    yield TarDamage(f"truncated or corrupt tar: {reason}{cut}")


def _end_problem(f: Any, offset: int) -> str | None:
    """None when the archive ends with its zero end-of-archive block at ``offset``, else what is wrong."""
    f.seek(offset)
    block = f.read(_BLOCK)
    if len(block) == _BLOCK and block == b"\0" * _BLOCK:
        return None
    if len(block) < _BLOCK:
        return f"archive ends at byte {offset + len(block)} without an end-of-archive marker"
    return f"invalid member header at byte {offset}"


@dataclass(frozen=True)
class SampleRecord:
    """What one webdataset sample gives a record."""

    caption: str | None = None
    image: bytes | None = None
    error: str | None = None
    fields: Mapping[str, Any] | None = None  # the ``key.json`` object, when asked for


def read_sample(sample: TarSample, *, image_extensions: Sequence[str], with_fields: bool) -> SampleRecord:
    """A sample's caption, image (its first member among ``image_extensions``) and, ``with_fields``, its
    ``.json`` object; a sample without an image or with an unreadable member gets a read error."""
    tar = sample.tar
    image_ext = next((ext for ext in image_extensions if ext in sample.members), None)
    try:
        caption = fields = None
        if "txt" in sample.members:
            caption = caption_text(_member_bytes(tar, sample.members["txt"]))
        if with_fields and "json" in sample.members:
            fields = json_object(_member_bytes(tar, sample.members["json"]))
        if image_ext is None:
            found = ", ".join(sorted(sample.members)) or "none"
            return SampleRecord(
                caption, None, f"no image in sample {sample.key!r} (members: {found})", fields
            )
        return SampleRecord(caption, _member_bytes(tar, sample.members[image_ext]), None, fields)
    except (tarfile.TarError, OSError) as exc:
        return SampleRecord(error=f"cannot read sample {sample.key!r}: {type(exc).__name__}: {exc}")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise tarfile.ReadError(f"member {member.name} has no data")
    return handle.read()
