"""Where the vectors to search come from, read chunk by chunk so that no caller needs them all in memory.

A ``VectorSource`` is a sequence of float32 vectors of one dimension, addressed by row (0 .. len - 1):
``chunks`` streams them in row order and ``take`` fetches given rows. Three sources:

- ``ArrayVectors``: an array already in memory (tests, small inputs, a memory-mapped ``.npy``);
- ``NpyVectors``: ``.npy`` matrices on any fsspec filesystem, e.g. clip-retrieval's
  ``embeddings/img_emb/img_emb_{unit}.npy``, rows numbered across the files in the order given; each file
  is read when its rows are needed (local files through a memory map opened per read, so only the rows read
  occupy memory);
- ``ConcatVectors``: sources one after the other (old records, then new ones, for incremental search).

The vectors are expected L2-normalised (the pipeline writes them so): the search compares inner products.
A zero row (clip-retrieval's placeholder for a record without that embedding) matches nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from fsspec import AbstractFileSystem

from pipelines import storage

DEFAULT_CHUNK_ROWS = 16384


@runtime_checkable
class VectorSource(Protocol):
    """Float32 vectors of one dimension, read in row order or by row."""

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        ...

    def __len__(self) -> int: ...

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 [m, dim] array)`` blocks of at most ``rows`` rows covering every row once."""
        ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The float32 ``[len(rows), dim]`` vectors of the given rows, in the order given."""
        ...


class ArrayVectors:
    """Vectors held in (or memory-mapped as) one ``[n, dim]`` array."""

    def __init__(self, array: np.ndarray):
        """Raises ValueError unless ``array`` is two-dimensional."""
        if array.ndim != 2:
            raise ValueError(f"vectors must be a 2-d [n, dim] array, got shape {array.shape}")
        self.array = array

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), rows):
            yield start, np.ascontiguousarray(self.array[start : start + rows], dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class ConcatVectors:
    """Several sources of one dimension, numbered one after the other."""

    def __init__(self, parts: Sequence[VectorSource]):
        """Raises ValueError when the parts' dimensions differ."""
        dims = {part.dim for part in parts if len(part)}
        if len(dims) > 1:
            raise ValueError(f"vector sources of different dimensions: {sorted(dims)}")
        self.parts = list(parts)
        self._dim = dims.pop() if dims else (parts[0].dim if parts else 0)
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for offset, part in zip(self.offsets, self.parts, strict=False):
            for start, block in part.chunks(rows):
                yield int(offset) + start, block

    def take(self, rows: np.ndarray) -> np.ndarray:
        return _take_by_part(rows, self.offsets, [part.take for part in self.parts], self.dim)


class NpyVectors:
    """Rows of ``.npy`` float matrices (one per file, all of one width), numbered across files in order.

    Only the files' headers are read on construction (shape and dtype; a file that is not a 2-d float
    ``.npy`` raises ValueError naming it).
    """

    def __init__(self, paths: Sequence[str], fs: AbstractFileSystem):
        self.fs = fs
        self.paths = list(paths)
        shapes = [npy_shape(fs, path) for path in self.paths]
        widths = {shape[1] for shape in shapes if shape[0]}
        if len(widths) > 1:
            raise ValueError(f"embedding files of different widths {sorted(widths)}: {self.paths}")
        self._dim = widths.pop() if widths else (shapes[0][1] if shapes else 0)
        self.offsets = np.cumsum([0] + [shape[0] for shape in shapes])

    @classmethod
    def open(cls, uris: Sequence[str], storage_options: Mapping | None = None) -> NpyVectors:
        """The files at ``uris`` (all on one filesystem)."""
        if not uris:
            return cls([], storage.open_filesystem("file:///")[0])
        fs, _ = storage.open_filesystem(uris[0], storage_options)
        return cls([storage.open_filesystem(uri, storage_options)[1] for uri in uris], fs)

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read_file(self, index: int) -> np.ndarray:
        """The whole float32 matrix of file ``index``."""
        return read_npy(self.fs, self.paths[index])

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(len(self.paths)):
            matrix = self.read_file(index)
            for start in range(0, matrix.shape[0], rows):
                yield int(self.offsets[index]) + start, np.ascontiguousarray(matrix[start : start + rows])

    def take(self, rows: np.ndarray) -> np.ndarray:
        readers = [_file_taker(self, index) for index in range(len(self.paths))]
        return _take_by_part(rows, self.offsets, readers, self.dim)


def _file_taker(source: NpyVectors, index: int):
    return lambda local: source.read_file(index)[local]


def _take_by_part(rows: np.ndarray, offsets: np.ndarray, takers: list, dim: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), dim), dtype=np.float32)
    if len(rows) and (rows.min() < 0 or rows.max() >= offsets[-1]):
        raise IndexError(f"rows outside 0..{int(offsets[-1]) - 1}")
    part_of = np.searchsorted(offsets, rows, side="right") - 1
    for part in np.unique(part_of):
        where = np.nonzero(part_of == part)[0]
        out[where] = takers[int(part)](rows[where] - offsets[part])
    return out


def npy_shape(fs: AbstractFileSystem, path: str) -> tuple[int, int]:
    """The ``(rows, width)`` of a 2-d float ``.npy`` from its header alone; ValueError names a bad file."""
    try:
        with fs.open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, SyntaxError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err
    if len(shape) != 2 or dtype.kind != "f":
        raise ValueError(f"{path}: expected a 2-d float matrix, got {dtype} of shape {shape}")
    return int(shape[0]), int(shape[1])


def read_npy(fs: AbstractFileSystem, path: str) -> np.ndarray:
    """A 2-d float ``.npy`` as float32 (memory-mapped when local); ValueError names a bad file."""
    try:
        if storage.is_local(fs):
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            matrix = np.load(io.BytesIO(storage.read_bytes(fs, path)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise ValueError(f"{path}: expected a 2-d float matrix, got {matrix.dtype} of shape {matrix.shape}")
    return matrix if matrix.dtype == np.float32 else matrix.astype(np.float32)
