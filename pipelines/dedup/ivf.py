"""Approximate all-pairs search for large inputs: an inverted-file (IVF) index, searched list by list.

The coarse quantizer is trained as faiss's ``IndexIVFFlat`` (inner product, spherical k-means over an evenly
spaced sample of the rows) trains it. Every row is assigned to its nearest centroid (its inverted list) and
every query row also records its ``nprobe`` nearest lists. The inverted lists are stored as one contiguous
float32 array (rows grouped by list) with the source row of each stored row and the list bounds: the layout
``IndexIVFFlat``'s inverted lists have, in one block, so that Ray tasks read it zero-copy from the object
store. A query finds the rows of the lists it probes whose inner product is at or above the threshold, which
is what ``IndexIVFFlat.range_search`` with the same ``nprobe`` returns (tested); but instead of walking the
lists query by query, ``search_lists`` takes one list at a time and range-searches the block of queries that
probe it against the block of its rows (faiss's ``range_search_inner_product``, a BLAS product), in tiles
of bounded size: 1.8-4.1x faster than ``IndexIVFFlat.range_search`` of the same index at 10^5 rows on the
development machine (docs/benchmarks.md), and the memory of a step never exceeds one ``tile x tile`` block
however unbalanced the lists are.

Parameters (``ivf_lists``): ``nlist`` = the power of two nearest ``LISTS_PER_SQRT_N * sqrt(n)`` (at least 1,
at most ``MAX_LISTS``), trained on ``TRAIN_ROWS_PER_LIST`` rows per list in ``TRAIN_ITERATIONS`` k-means
iterations; ``nprobe`` comes from the search configuration. ``nlist`` balances the two costs that grow
with n: assigning rows (n x nlist products) and scanning lists (n x nprobe x n / nlist), equal near
sqrt(n x nprobe) = 4 sqrt(n) at nprobe 16 (at 10^6 rows: 102 s and 138 s, bench/dedup.py cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from pipelines.dedup.flat import range_search_block
from pipelines.dedup.pairs import PairRules, Pairs
from pipelines.dedup.vectors import VectorSource

LISTS_PER_SQRT_N = 4
MAX_LISTS = 65536
TRAIN_ROWS_PER_LIST = 16
TRAIN_ITERATIONS = 10
TILE_ROWS = 4096


def ivf_lists(n: int) -> int:
    """The number of inverted lists for ``n`` rows: the power of two nearest ``4 * sqrt(n)``."""
    if n < 1:
        return 1
    target = LISTS_PER_SQRT_N * math.sqrt(n)
    return int(min(MAX_LISTS, max(1, 2 ** round(math.log2(target)))))


def train_centroids(source: VectorSource, nlist: int, *, seed: int = 0) -> np.ndarray:
    """Unit-norm ``[nlist, dim]`` centroids of spherical k-means over an evenly spaced sample of rows."""
    n = len(source)
    if nlist > n:
        raise ValueError(f"{nlist} inverted lists need at least as many rows, got {n}")
    sample_rows = min(n, TRAIN_ROWS_PER_LIST * nlist)
    rows = np.unique(np.linspace(0, n - 1, sample_rows).round().astype(np.int64))
    sample = source.take(rows)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(source.dim), source.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = TRAIN_ITERATIONS
    index.cp.seed = seed
    index.cp.spherical = True
    index.cp.min_points_per_centroid = 1  # the sample is chosen above; no warning about its size
    index.cp.max_points_per_centroid = max(1, sample_rows)  # and faiss must not subsample it again
    index.train(sample)
    return index.quantizer.reconstruct_n(0, nlist)


@dataclass(frozen=True)
class IvfLayout:
    """The inverted lists of all rows and, for each list, the stored rows of the queries that probe it."""

    vectors: np.ndarray  # float32 [n, dim]: rows grouped by list
    source_rows: np.ndarray  # int64 [n]: the source row of each stored row
    bounds: np.ndarray  # int64 [nlist + 1]: list l is stored rows bounds[l]:bounds[l+1]
    probe_rows: np.ndarray  # int64: stored rows of the queries probing each list, grouped by list
    probe_bounds: np.ndarray  # int64 [nlist + 1]: the queries of list l are probe_rows[probe_bounds[l]:...]

    @property
    def nlist(self) -> int:
        return int(self.bounds.shape[0] - 1)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays ``search_lists`` reads, in its argument order."""
        return (self.vectors, self.source_rows, self.bounds, self.probe_rows, self.probe_bounds)


def build_layout(
    source: VectorSource,
    centroids: np.ndarray,
    *,
    nprobe: int,
    queries_from: int = 0,
    chunk_rows: int = 16384,
) -> IvfLayout:
    """Assign every row to its list and every query row (``queries_from`` onwards) to its probed lists.

    Reads the source twice (assignment, then placement), holding one chunk and the layout at a time.
    """
    n, dim = len(source), source.dim
    nlist = centroids.shape[0]
    nprobe = max(1, min(nprobe, nlist))
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    home = np.empty(n, dtype=np.int32)
    probes = np.empty((n - queries_from, nprobe), dtype=np.int32)
    for start, chunk in source.chunks(chunk_rows):
        stop = start + len(chunk)
        split = min(max(queries_from - start, 0), len(chunk))  # rows before `split` are not queries
        if split:
            _, nearest = quantizer.search(chunk[:split], 1)
            home[start : start + split] = nearest[:, 0]
        if split < len(chunk):
            _, nearest = quantizer.search(chunk[split:], nprobe)
            home[start + split : stop] = nearest[:, 0]
            probes[start + split - queries_from : stop - queries_from] = nearest
    source_rows = np.argsort(home, kind="stable")
    stored_at = np.empty(n, dtype=np.int64)
    stored_at[source_rows] = np.arange(n)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(home, minlength=nlist))]).astype(np.int64)
    del home
    vectors = np.empty((n, dim), dtype=np.float32)
    for start, chunk in source.chunks(chunk_rows):
        vectors[stored_at[start : start + len(chunk)]] = chunk
    probed = probes.ravel()
    valid = probed >= 0  # faiss pads with -1 when there are fewer lists than probes
    query_stored = np.repeat(stored_at[queries_from:], nprobe)[valid]
    probed = probed[valid]
    del probes
    order = np.argsort(probed, kind="stable")
    probe_rows = query_stored[order]
    probe_bounds = np.concatenate([[0], np.cumsum(np.bincount(probed, minlength=nlist))]).astype(np.int64)
    return IvfLayout(vectors, source_rows.astype(np.int64), bounds, probe_rows, probe_bounds)


def search_lists(
    vectors: np.ndarray,
    source_rows: np.ndarray,
    bounds: np.ndarray,
    probe_rows: np.ndarray,
    probe_bounds: np.ndarray,
    phashes: np.ndarray | None,
    first_list: int,
    stop_list: int,
    rules: PairRules,
) -> Pairs:
    """Pairs (query source row, partner source row) found in lists ``first_list .. stop_list - 1``.

    One task of the IVF search; the arrays are an ``IvfLayout``'s, ``phashes`` those of the source rows
    (or None).
    """
    found = []
    for lst in range(first_list, stop_list):
        base_start, base_stop = int(bounds[lst]), int(bounds[lst + 1])
        queries = probe_rows[probe_bounds[lst] : probe_bounds[lst + 1]]
        if base_stop == base_start or len(queries) == 0:
            continue
        for q_start in range(0, len(queries), TILE_ROWS):
            query_tile = queries[q_start : q_start + TILE_ROWS]
            query_vectors = vectors[query_tile]
            for b_start in range(base_start, base_stop, TILE_ROWS):
                b_stop = min(b_start + TILE_ROWS, base_stop)
                found.append(
                    range_search_block(
                        query_vectors,
                        vectors[b_start:b_stop],
                        source_rows[query_tile],
                        source_rows[b_start:b_stop],
                        rules,
                        phashes,
                    )
                )
    return rules.finish(Pairs.concat(found), None) if found else Pairs.empty()
