"""Bounded reads of a remote file: a seekable file object whose reads are small ranged requests.

fsspec's buffered files for object stores read ahead in large blocks (s3fs: 50 MiB, i.e. the whole object for
a typical tar shard), so scanning a tar's member headers through one fetches every byte of it.
:class:`RangedFile` instead fetches ``[position, position + max(wanted, fetch_size))`` for each read its
buffer cannot serve, so a header scan that seeks over member data costs one small request per header (or
per few headers, when small members sit between them) and reads a few KiB per sample.
"""

from __future__ import annotations

import io
from typing import Any

from fsspec import AbstractFileSystem

from pipelines import storage

DEFAULT_FETCH_SIZE = 1536  # bytes per request at least: one PAX member header (3 blocks), or 3 plain ones


class RangedFile(io.RawIOBase):
    """A read-only file over ``fs.cat_file(path, start, end)`` with one small forward buffer.

    ``requests`` and ``fetched`` count the ranged requests made and the bytes they returned.
    """

    def __init__(self, fs: AbstractFileSystem, path: str, size: int, *, fetch_size: int = DEFAULT_FETCH_SIZE):
        super().__init__()
        self._fs, self._path, self._size = fs, path, size
        self._fetch_size = max(1, fetch_size)
        self._pos = 0
        self._buffer = b""
        self._buffer_start = 0
        self.requests = 0
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        end = min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        in_buffer = self._buffer_start <= self._pos and end <= self._buffer_start + len(self._buffer)
        if not in_buffer:
            fetch_end = min(self._size, max(end, self._pos + self._fetch_size))
            self._buffer = self._fs.cat_file(self._path, start=self._pos, end=fetch_end)
            self._buffer_start = self._pos
            self.requests += 1
            self.fetched += len(self._buffer)
        data = self._buffer[self._pos - self._buffer_start : end - self._buffer_start]
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_for_headers(
    fs: AbstractFileSystem, path: str, size: int | None, *, fetch_size: int = DEFAULT_FETCH_SIZE
) -> Any:
    """A file to scan headers of: local files as they are (reads are cheap), remote ones as a
    :class:`RangedFile` (``size`` from the listing saves a request; looked up when unknown)."""
    if storage.is_local(fs):
        return fs.open(path, "rb")
    if size is None:
        size = int(fs.info(path)["size"])
    return RangedFile(fs, path, size, fetch_size=fetch_size)
