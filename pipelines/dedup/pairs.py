"""Pairs of similar vectors as three aligned arrays, and the reductions every search applies to them.

A search produces, per query row, the rows it found at or above the threshold. ``cap_per_query`` keeps each
query's ``max_neighbours`` most similar (ties by row), so the edges kept stay within ``rows x max_neighbours``
however large a cluster of near-identical records is (mode collapse): in a cluster larger than that the kept
edges still join every member to its nearest neighbours, so it remains one group. ``Pairs.canonical`` turns
query-found edges into undirected pairs (``left < right``, each once, the larger similarity of the two
directions), sorted, so that the result does not depend on how the work was split. ``PairRules`` holds
what every search applies to the pairs a block of work found: the threshold (a pair counts when its cosine is
at least ``threshold`` minus ``SIMILARITY_TOLERANCE``, so that a vector's float32 copy, whose inner product
with it can round to 0.99999994, matches at threshold 1), no self-pairs, the optional pHash restriction and
the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.dedup.phash import hamming_many

SIMILARITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Pairs:
    """Rows ``left[i]`` and ``right[i]`` have cosine similarity ``similarity[i]``."""

    left: np.ndarray  # int64
    right: np.ndarray  # int64
    similarity: np.ndarray  # float32

    def __len__(self) -> int:
        return int(self.left.shape[0])

    @classmethod
    def empty(cls) -> Pairs:
        """No pairs."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: Sequence[Pairs]) -> Pairs:
        """All pairs of ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.left for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.right for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.similarity for p in parts]).astype(np.float32, copy=False),
        )

    def select(self, mask: np.ndarray) -> Pairs:
        """The pairs where ``mask`` (boolean or indices) holds."""
        return Pairs(self.left[mask], self.right[mask], self.similarity[mask])

    def canonical(self) -> Pairs:
        """Undirected pairs: ``left < right``, self-pairs dropped, each pair once, sorted by (left, right)."""
        low = np.minimum(self.left, self.right)
        high = np.maximum(self.left, self.right)
        keep = low != high
        low, high, similarity = low[keep], high[keep], self.similarity[keep]
        order = np.lexsort((-similarity, high, low))
        low, high, similarity = low[order], high[order], similarity[order]
        first = np.ones(len(low), dtype=bool)
        first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
        return Pairs(low[first], high[first], similarity[first])

    def as_set(self) -> set[tuple[int, int]]:
        """The pairs as a set of ``(min, max)`` row tuples (for comparisons)."""
        c = self.canonical()
        return set(zip(c.left.tolist(), c.right.tolist(), strict=True))


def cap_per_query(found: Pairs, max_neighbours: int | None) -> Pairs:
    """Each query's (``left``) at most ``max_neighbours`` most similar partners, ties by the partner's row."""
    if max_neighbours is None or len(found) == 0:
        return found
    order = np.lexsort((found.right, -found.similarity, found.left))
    left = found.left[order]
    starts = np.ones(len(left), dtype=bool)
    starts[1:] = left[1:] != left[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(left)), 0))
    rank = np.arange(len(left)) - group_start
    if rank.max() < max_neighbours:
        return found
    return found.select(order[rank < max_neighbours])


@dataclass(frozen=True)
class PairRules:
    """What makes a found pair count: cosine, optional pHash distance, and the per-query cap."""

    threshold: float
    max_neighbours: int | None = None
    max_hamming: int | None = None  # with pHashes given: keep pairs at most this many bits apart

    @property
    def radius(self) -> float:
        """The radius to give faiss's range searches, which keep inner products strictly above it."""
        bound = np.float32(self.threshold - SIMILARITY_TOLERANCE)
        return float(np.nextafter(bound, np.float32(-np.inf)))

    def counts(self, similarity: np.ndarray) -> np.ndarray:
        """Which similarities count (the exact bound, after a range search's radius)."""
        return similarity >= self.threshold - SIMILARITY_TOLERANCE

    def finish(self, found: Pairs, phashes: np.ndarray | None) -> Pairs:
        """Self-pairs dropped, the pHash restriction and the cap applied."""
        found = found.select(found.left != found.right)
        if self.max_hamming is not None and phashes is not None and len(found):
            found = found.select(hamming_many(phashes[found.left], phashes[found.right]) <= self.max_hamming)
        return cap_per_query(found, self.max_neighbours)
