"""Exact search: faiss ``IndexFlatIP`` and ``range_search``, a chunk of queries at a time.

The index holds every row; each chunk of query rows (reconstructed from the index itself, so a Ray task
needs nothing but the index) is range-searched for inner products at or above the threshold. Chunks are
sized so that one chunk's results stay below ``RANGE_RESULTS_BUDGET`` entries even if every query matched
every row; a similarity matrix of all rows is never formed. ``range_search_block`` is the same faiss kernel
(``faiss.range_search_inner_product``) between two arrays, without an index: the IVF search's step.
"""

from __future__ import annotations

import faiss
import numpy as np

from pipelines.dedup.pairs import PairRules, Pairs
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
    phashes: np.ndarray | None,
    start: int,
    stop: int,
    rules: PairRules,
) -> Pairs:
    """Pairs (query row, partner row) for the index's own rows ``start .. stop - 1`` as queries.

    One task of the exact search; ``phashes`` are those of the rows (or None).
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
    limits, similarity, partners = index.range_search(np.ascontiguousarray(queries), rules.radius)
    return _pairs(limits, similarity, partners, query_rows, None, rules, phashes)


def range_search_block(
    queries: np.ndarray,
    base: np.ndarray,
    query_rows: np.ndarray,
    base_rows: np.ndarray,
    rules: PairRules,
    phashes: np.ndarray | None = None,
) -> Pairs:
    """The pairs between two float32 blocks (rows named by ``query_rows`` / ``base_rows``) that count."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    nq, nb = int(queries.shape[0]), int(base.shape[0])
    if nq == 0 or nb == 0:
        return Pairs.empty()
    result = faiss.RangeSearchResult(nq)
    faiss.range_search_inner_product(
        faiss.swig_ptr(queries), faiss.swig_ptr(base), int(queries.shape[1]), nq, nb, rules.radius, result
    )
    limits = faiss.rev_swig_ptr(result.lims, nq + 1).astype(np.int64)
    total = int(limits[-1])
    if total == 0:
        return Pairs.empty()
    similarity = faiss.rev_swig_ptr(result.distances, total).copy()
    partners = faiss.rev_swig_ptr(result.labels, total).copy()
    return _pairs(limits, similarity, partners, query_rows, base_rows, rules, phashes)


def _pairs(limits, similarity, partners, query_rows, base_rows, rules: PairRules, phashes) -> Pairs:
    bounds = np.asarray(limits, dtype=np.int64)
    left = np.repeat(np.asarray(query_rows, dtype=np.int64), bounds[1:] - bounds[:-1])
    right = (
        partners.astype(np.int64) if base_rows is None else np.asarray(base_rows, dtype=np.int64)[partners]
    )
    keep = rules.counts(similarity)
    found = Pairs(left[keep], right[keep], similarity[keep].astype(np.float32))
    return rules.finish(found, phashes)
