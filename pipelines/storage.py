"""Filesystem resolution and whole-file I/O through fsspec (local paths, ``file://``, ``s3://``, ...).

S3 endpoint and credentials come from ``storage_options`` (s3fs arguments such as ``key``, ``secret``,
``client_kwargs={"endpoint_url": ...}``) or, when absent, from the usual AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), which botocore reads itself.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import fsspec
from fsspec import AbstractFileSystem

from unidiffuser.file_versions import file_version

_GLOB_CHARS = ("*", "?", "[")


def open_filesystem(uri: str, storage_options: Mapping | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve ``uri`` to its filesystem and the path inside it (protocol stripped)."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs, path


def to_uri(fs: AbstractFileSystem, path: str) -> str:
    """The full URI of ``path`` on ``fs`` (``file:///...`` for local files, ``s3://...`` for S3)."""
    return fs.unstrip_protocol(path)


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local filesystem (where renames are atomic)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (fsspec paths are always posix-style)."""
    return posixpath.join(base.rstrip("/") or "/", *parts)


@dataclass(frozen=True)
class ListedFile:
    """One file found under an input URI."""

    path: str  # path on the filesystem (protocol stripped)
    relpath: str  # path relative to the listing root, posix separators
    size: int | None
    version: str | None = None  # what the filesystem reports changing on a rewrite (ETag, mtime, ...)

    @property
    def stamp(self) -> str:
        """Size and version: changes when the file is rewritten (resume redoes units that read it)."""
        return f"{self.size}:{self.version}"


def list_files(fs: AbstractFileSystem, path: str) -> list[ListedFile]:
    """Expand a file, a folder (recursively) or a glob into its files, sorted by path.

    Names starting with ``.`` or ``_`` (hidden files, ``_SUCCESS``, ``_summary.json``, ``_units/``) are
    skipped, as Spark and Ray do. Raises FileNotFoundError when nothing matches.
    """
    fs.invalidate_cache()  # listings must see files written since (s3fs caches them per instance)
    if any(ch in path for ch in _GLOB_CHARS):
        found = fs.glob(path, detail=True)
        root = _glob_root(path)
        entries = {p: info for p, info in found.items() if info.get("type") != "directory"}
        # A glob may also match folders: expand them too.
        for p, info in found.items():
            if info.get("type") == "directory":
                entries.update(_find(fs, p))
    elif fs.isdir(path):
        root = path
        entries = _find(fs, path)
    elif fs.isfile(path):
        root = posixpath.dirname(path.rstrip("/"))
        entries = {path: fs.info(path)}
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")
    files = []
    for p, info in sorted(entries.items()):
        rel = _relative(p, root)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        files.append(ListedFile(path=p, relpath=rel, size=info.get("size"), version=file_version(info)))
    if not files:
        raise FileNotFoundError(f"no input files under {path}")
    return files


def _find(fs: AbstractFileSystem, path: str) -> dict[str, dict]:
    return {p: info for p, info in fs.find(path, detail=True).items() if info.get("type") != "directory"}


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in _GLOB_CHARS):
            break
        fixed.append(part)
    return "/".join(fixed)


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return posixpath.basename(path)


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes:
    """Read a whole file."""
    return fs.cat_file(path)


def write_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so readers never see a partial one.

    On the local filesystem the bytes go to a temporary name in the same folder and are renamed over
    ``path`` (atomic on POSIX). On object stores a single PUT (or a completed multipart upload) is
    already all-or-nothing.
    """
    parent = posixpath.dirname(path)
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm_file(tmp)
    else:
        fs.pipe_file(path, data)


def remove_file(fs: AbstractFileSystem, path: str) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def write_bytes_if_changed(fs: AbstractFileSystem, path: str, data: bytes) -> bool:
    """``write_bytes`` unless ``path`` already holds exactly ``data`` (a re-run that changes nothing leaves its
    files as they were); returns whether it wrote."""
    try:
        if read_bytes(fs, path) == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes(fs, path, data)
    return True
