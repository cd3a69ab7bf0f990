"""From near-duplicate pairs to decisions: group by union-find, keep the best record of each group.

Records are rows ``0..n-1`` (``keys[i]``, ``scores[i]``, vector ``i``); pairs come from pipelines/dedup/search.py.
Pairs join rows into groups (connected components: if a~b and b~c, then a, b and c are one group even when
a and c are not within the threshold of each other). In each group the best record is kept: highest score
first (a missing or NaN score ranks below every number), ties by key (the smaller string wins). Every other
record becomes a ``Removal(key, kept_key, similarity)``: ``similarity`` is the cosine of the removed record
and the kept one, computed from their vectors; through a chain it can be below the search threshold, and it
is reported as it is. The decisions are deterministic (independent of the pairs' order) and idempotent:
after removals no two survivors are joined by a pair, so running again on the survivors (with the same
pairs among them) removes nothing.

Incremental runs (``new_from``): rows ``0..new_from-1`` are old records with their fates decided (``earlier``
holds the old removals), rows ``new_from..`` are new. Old fates never change: a removed old record stays
removed and a kept old record is never removed, whatever the new records score. The rule, in one sentence:
a new record is removed when its group holds a kept old record, in favour of the best kept old record of
the group; otherwise the group's new records are ranked among themselves as in a fresh run. A group is
formed as in a fresh run over all records, where an old removed record counts as joined to the record it was
removed for (so a new copy of a removed record goes to the same kept record). Only pairs with a new row
matter (``find_new_pairs`` computes exactly those); old-old pairs are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.dedup.pairs import Pairs
from pipelines.dedup.vectors import VectorSource

SIMILARITY_ROWS_PER_READ = 65536


@dataclass(frozen=True)
class Removal:
    """Record ``key`` is removed as a near-duplicate of ``kept_key`` (their cosine: ``similarity``)."""

    key: str
    kept_key: str
    similarity: float

    @property
    def reason(self) -> str:
        """The removed record's reason string."""
        return near_duplicate_reason(self.kept_key, self.similarity)


def near_duplicate_reason(kept_key: str, similarity: float) -> str:
    """``near-duplicate of {kept_key} (cosine 0.973)``."""
    return f"near-duplicate of {kept_key} (cosine {similarity:.3f})"


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Union-find over rows ``0..n-1`` joined by the edges ``(left[i], right[i])``.

    Returns ``labels`` with ``labels[i]`` the smallest row of ``i``'s group. Vectorised: each round hooks the
    larger of two different group labels onto the smaller, then compresses paths by pointer jumping, until
    every edge joins equal labels.
    """
    labels = np.arange(n, dtype=np.int64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    while len(left):
        label_left, label_right = labels[left], labels[right]
        differ = label_left != label_right
        if not differ.any():
            break
        low = np.minimum(label_left[differ], label_right[differ])
        high = np.maximum(label_left[differ], label_right[differ])
        np.minimum.at(labels, high, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
    return labels


def rank_records(keys: Sequence[str], scores: Sequence[float | None]) -> np.ndarray:
    """``rank[i]``: 0 for the best record (highest score, ties by the smaller key), 1 for the next, ..."""
    order = sorted(range(len(keys)), key=lambda i: (_score_key(scores[i]), keys[i]))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(keys))
    return rank


def _score_key(score: float | None) -> tuple[int, float]:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return (1, 0.0)
    return (0, -float(score))


def group_removals(
    keys: Sequence[str],
    scores: Sequence[float | None],
    pairs: Pairs,
    vectors: VectorSource,
    *,
    earlier: Sequence[Removal] = (),
    new_from: int = 0,
) -> list[Removal]:
    """The removals of new records (rows ``new_from..``; all rows by default), in row order.

    ``pairs`` are rows joined by the search; ``vectors`` gives the cosines of the removals. ``earlier``: the
    old records' removals (keys of records not among the rows are ignored). Raises ValueError when lengths
    differ, a key repeats, ``new_from`` is out of range or an earlier removal names a new record.
    """
    n = len(keys)
    if len(scores) != n or len(vectors) != n:
        raise ValueError(f"{n} keys, {len(scores)} scores and {len(vectors)} vectors: they must match")
    if not 0 <= new_from <= n:
        raise ValueError(f"new_from must be in 0..{n}, got {new_from}")
    row_of = {key: row for row, key in enumerate(keys)}
    if len(row_of) != n:
        raise ValueError("keys must be unique")
    if new_from == n or n == 0:
        return []
    old_removed = np.zeros(n, dtype=bool)
    extra_left, extra_right = [], []
    for removal in earlier:
        row = row_of.get(removal.key)
        if row is None:
            continue
        if row >= new_from:
            raise ValueError(f"earlier removal of {removal.key!r}, which is a new record")
        old_removed[row] = True
        kept = row_of.get(removal.kept_key)
        if kept is not None:
            extra_left.append(row)
            extra_right.append(kept)
    with_new = (pairs.left >= new_from) | (pairs.right >= new_from)
    left = np.concatenate([pairs.left[with_new], np.asarray(extra_left, dtype=np.int64)])
    right = np.concatenate([pairs.right[with_new], np.asarray(extra_right, dtype=np.int64)])
    if len(left) and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n):
        raise ValueError(f"pairs name rows outside 0..{n - 1}")
    labels = connected_components(n, left, right)

    # who may win a group: kept old records first (any of them beats every new one), then new ones
    rank = rank_records(keys, scores)
    is_new = np.arange(n) >= new_from
    never = 2 * n  # old removed records never win
    priority = np.where(is_new, rank + n, np.where(old_removed, never, rank))
    best = np.full(n, never, dtype=np.int64)
    np.minimum.at(best, labels, priority)
    winner_of_priority = np.full(2 * n + 1, -1, dtype=np.int64)
    winner_of_priority[priority] = np.arange(n)
    winner = np.where(best[labels] < never, winner_of_priority[best[labels]], -1)
    removed = np.nonzero(is_new & (winner != np.arange(n)) & (winner >= 0))[0]
    similarity = _cosines(vectors, removed, winner[removed])
    return [
        Removal(keys[row], keys[kept], float(sim))
        for row, kept, sim in zip(
            removed.tolist(), winner[removed].tolist(), similarity.tolist(), strict=True
        )
    ]


def _cosines(vectors: VectorSource, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), SIMILARITY_ROWS_PER_READ):
        stop = start + SIMILARITY_ROWS_PER_READ
        va = vectors.take(a[start:stop]).astype(np.float64)
        vb = vectors.take(b[start:stop]).astype(np.float64)
        out[start:stop] = np.einsum("ij,ij->i", va, vb)
    return out
