"""Exact search for inputs that fit: faiss ``IndexFlatIP`` and ``range_search``, a chunk of queries at a time.

The index holds every row; each chunk of query rows (reconstructed from the index itself, so a Ray task
needs nothing but the index) is range-searched for inner products at or above the threshold. Chunks are
sized so that one chunk's results stay below ``RANGE_RESULTS_BUDGET`` entries even if every query matched
every row; a similarity matrix of all rows is never formed.
"""

from __future__ import annotations

import faiss
import numpy as np

from pipelines.dedup.pairs import SIMILARITY_TOLERANCE, PairRules, Pairs
from pipelines.dedup.vectors import VectorSource

RANGE_RESULTS_BUDGET = 1 << 25  # entries (12 bytes each) of one chunk's range-search result, at most
MAX_QUERY_CHUNK = 4096


def flat_index(source: VectorSource, chunk_rows: int = 16384) -> faiss.IndexFlatIP:
    """An ``IndexFlatIP`` holding every row of ``source``."""
    index = faiss.IndexFlatIP(source.dim)
    for _, chunk in source.chunks(chunk_rows):
        index.add(chunk)
    return index


def query_chunk_rows(n: int) -> int:
    """Queries per range search over ``n`` rows, so that even all-matching results fit the budget."""
    return max(1, min(MAX_QUERY_CHUNK, RANGE_RESULTS_BUDGET // max(n, 1)))


def as_index(index: faiss.Index | np.ndarray) -> faiss.Index:
    """An index, or one serialised by ``faiss.serialize_index`` (as Ray tasks receive it)."""
    return faiss.deserialize_index(index) if isinstance(index, np.ndarray) else index


def range_search_rows(
    index: faiss.Index | np.ndarray,
    start: int,
    stop: int,
    rules: PairRules,
    phashes: np.ndarray | None = None,
) -> Pairs:
    """Pairs (query row, partner row) for the index's own rows ``start .. stop - 1`` as queries.

    One Ray task (or one driver step) of the exact search.
    """
    index = as_index(index)
    queries = index.reconstruct_n(start, stop - start)
    return range_search(index, queries, np.arange(start, stop, dtype=np.int64), rules, phashes)


def range_search(
    index: faiss.Index,
    queries: np.ndarray,
    query_rows: np.ndarray,
    rules: PairRules,
    phashes: np.ndarray | None,
) -> Pairs:
    """Range search ``queries`` (source rows ``query_rows``) against ``index``."""
    # faiss keeps inner products strictly above the radius; the rules then apply the exact bound
    radius = np.nextafter(np.float32(rules.threshold - SIMILARITY_TOLERANCE), np.float32(-np.inf))
    limits, similarity, partners = index.range_search(np.ascontiguousarray(queries), float(radius))
    bounds = np.asarray(limits, dtype=np.int64)
    counts = bounds[1:] - bounds[:-1]
    left = np.repeat(query_rows, counts)
    keep = similarity >= rules.threshold - SIMILARITY_TOLERANCE
    found = Pairs(left[keep], partners[keep].astype(np.int64), similarity[keep].astype(np.float32))
    return rules.finish(found, phashes)
