"""Find every pair of vectors at or above a cosine threshold: exact for inputs that fit, IVF above that.

The vectors are float32 and L2-normalised, so cosine = inner product. Three questions are answered:

- ``find_pairs(vectors, config)``: every pair ``(i, j)``, ``i < j``, with cosine >= ``config.threshold``;
- ``find_new_pairs(old, new, config)``: the pairs of each new vector with any old or other new one, rows
  numbered old first, then new; no old-old pair is computed (an incremental run compares only new records);
- ``nearest_matches(base, queries, threshold, config)``: for each query the most similar base vector, where
  it is at or above the threshold (decontamination against reference sets).

``plan_search`` says how (and is what the searches follow):

- ``exact`` (faiss ``IndexFlatIP.range_search``, pipelines/dedup/flat.py) up to
  ``config.exact_max_vectors`` rows, 20 000 by default: exact and IVF cost about the same at 10^4 rows of
  768-d on the 2-core development machine (1.4 s and 0.8 s), exact all-pairs time grows as n^2 (7 s at
  2 x 10^4, 19 s at 3 x 10^4), and below 2 x 10^4 a few seconds buy recall 1 (bench/dedup.py cost,
  docs/benchmarks.md);
- ``ivf`` above (pipelines/dedup/ivf.py): ``nlist`` = ``ivf_lists(n)`` (the power of two nearest 4 sqrt(n)),
  ``nprobe`` = ``config.nprobe``, 16 by default: recall of planted pairs 0.998 at 10^5 and 0.994 at 10^6
  random 768-d vectors with pairs from the threshold up (the hard case: real embeddings are clustered);
  nprobe 4 / 8 / 32 gave 0.959 / 0.989 / 1.000 at 10^5. IVF misses pairs whose rows land in lists neither
  probes: its recall is measured, not assumed.

Work is split into tasks (chunks of queries for exact search, ranges of inverted lists for IVF, about
``tasks_per_cpu`` per worker) that run on driver threads, or as Ray tasks reading one copy of the index from
the object store when ``config.parallel`` is ``"ray"``, or ``"auto"`` with at least ``config.ray_min_vectors``
rows and Ray already initialised (this code never starts Ray). Training the IVF quantizer and assigning the
rows to lists run in the driver either way. The result does not depend on where the tasks ran: pairs are
capped per query (``max_neighbours``, see pipelines/dedup/pairs.py) and made canonical, so memory stays
within the index, one task's block per worker and ``rows x max_neighbours`` pairs; no ``n x n`` matrix is
ever formed.

With ``phashes`` (one uint64 pHash per row, pipelines/dedup/phash.py) and ``config.max_hamming`` set, a pair
counts only when the two images' pHashes are also at most that many bits apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from pipelines.dedup import flat, ivf
from pipelines.dedup.pairs import SIMILARITY_TOLERANCE, PairRules, Pairs, cap_per_query
from pipelines.dedup.tasks import driver_threads, ray_cpus, ray_running, run_tasks
from pipelines.dedup.vectors import ArrayVectors, ConcatVectors, VectorSource

LOG = logging.getLogger(__name__)
Method = Literal["auto", "exact", "ivf"]
Parallel = Literal["auto", "driver", "ray"]
CHUNK_ROWS = 16384
COLLECT_BUDGET = 1 << 23  # directed pairs held before the driver re-applies the cap (20 bytes each)


@dataclass(frozen=True)
class SearchConfig:
    """How pairs are searched; validated on construction (ValueError names the field)."""

    threshold: float  # cosine similarity in (0, 1]
    method: Method = "auto"
    exact_max_vectors: int = 20_000  # above this, "auto" uses IVF
    nprobe: int = 16
    nlist: int | None = None  # None: ivf_lists(n)
    max_neighbours: int | None = 64  # per query row; None keeps every pair
    max_hamming: int | None = None  # pHash restriction, used when pHashes are given
    parallel: Parallel = "auto"
    ray_min_vectors: int = 200_000  # "auto" uses Ray from this many rows (when Ray is initialised)
    threads: int | None = None  # driver threads; None: the CPUs this process may use
    tasks_per_cpu: int = 4  # tasks per driver thread or Ray CPU
    seed: int = 0  # k-means seed of the IVF quantizer

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        for name in ("exact_max_vectors", "nprobe", "ray_min_vectors", "tasks_per_cpu"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("nlist", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {getattr(self, name)}")
        if self.max_neighbours is not None and self.max_neighbours < 1:
            raise ValueError(f"max_neighbours must be at least 1 or None, got {self.max_neighbours}")
        if self.max_hamming is not None and not 0 <= self.max_hamming <= 64:
            raise ValueError(f"max_hamming must be in 0..64 or None, got {self.max_hamming}")
        if self.method not in ("auto", "exact", "ivf"):
            raise ValueError(f"method must be auto, exact or ivf, got {self.method!r}")
        if self.parallel not in ("auto", "driver", "ray"):
            raise ValueError(f"parallel must be auto, driver or ray, got {self.parallel!r}")

    def rules(self) -> PairRules:
        """What makes a found pair count."""
        return PairRules(self.threshold, self.max_neighbours, self.max_hamming)


@dataclass(frozen=True)
class SearchPlan:
    """How a search over ``rows`` vectors runs: method, IVF parameters, where the tasks run."""

    rows: int
    method: Literal["exact", "ivf"]
    nlist: int | None
    nprobe: int | None
    use_ray: bool
    workers: int  # driver threads, or the Ray cluster's CPUs
    tasks: int  # how many parts the work is split into (at least)

    def run(self, function, shared: list, args) -> Iterator:
        """Run the plan's tasks (``function(*shared, *each of args)``) where the plan says."""
        return run_tasks(
            function, shared, args, use_ray=self.use_ray, threads=self.workers, max_in_flight=2 * self.workers
        )


def plan_search(rows: int, config: SearchConfig) -> SearchPlan:
    """The method, IVF parameters and executor a search over ``rows`` vectors uses.

    Raises RuntimeError when ``config.parallel`` is ``"ray"`` and Ray is not initialised.
    """
    if config.parallel == "ray" and not ray_running():
        raise RuntimeError(
            "parallel='ray' needs a running Ray (ray.init() first); the dedup code never starts it"
        )
    method = config.method
    if method == "auto":
        method = "exact" if rows <= config.exact_max_vectors else "ivf"
    use_ray = config.parallel == "ray" or (
        config.parallel == "auto" and rows >= config.ray_min_vectors and ray_running()
    )
    workers = ray_cpus() if use_ray else (config.threads or driver_threads())
    tasks = workers * config.tasks_per_cpu
    if method == "exact":
        return SearchPlan(rows, "exact", None, None, use_ray, workers, tasks)
    nlist = min(config.nlist or ivf.ivf_lists(rows), max(rows, 1))
    return SearchPlan(rows, "ivf", nlist, min(config.nprobe, nlist), use_ray, workers, tasks)


def find_pairs(vectors: VectorSource, config: SearchConfig, *, phashes: np.ndarray | None = None) -> Pairs:
    """Every pair of rows with cosine >= ``config.threshold``, canonical (``left < right``, sorted)."""
    return _search(vectors, 0, config, phashes)


def find_new_pairs(
    old: VectorSource, new: VectorSource, config: SearchConfig, *, phashes: np.ndarray | None = None
) -> Pairs:
    """Pairs of each new row with any old or other new row (rows: old ``0..len(old)-1``, then new).

    ``phashes``, if given, covers old then new rows. Old-old pairs are never computed.
    """
    return _search(ConcatVectors([old, new]), len(old), config, phashes)


def _search(
    source: VectorSource, queries_from: int, config: SearchConfig, phashes: np.ndarray | None
) -> Pairs:
    n = len(source)
    if phashes is not None and len(phashes) != n:
        raise ValueError(f"{len(phashes)} pHashes for {n} vectors")
    if n - queries_from < 1 or n < 2:
        return Pairs.empty()
    plan = plan_search(n, config)
    rules = config.rules()
    hashes = None if config.max_hamming is None or phashes is None else np.asarray(phashes, dtype=np.uint64)
    if plan.method == "exact":
        results = _exact_tasks(source, queries_from, plan, rules, hashes, config)
    else:
        results = _ivf_tasks(source, queries_from, plan, rules, hashes, config)
    started = time.perf_counter()
    collected = _Collector(config.max_neighbours)
    for part in results:
        collected.add(part)
    pairs = collected.result()
    LOG.info("%s search of %d queries: %d pairs in %.1f s", plan.method, n - queries_from, len(pairs),
             time.perf_counter() - started)  # fmt: skip
    return pairs


def _exact_tasks(source, queries_from, plan, rules, hashes, config):
    index = flat.flat_index(source, CHUNK_ROWS)
    queries = plan.rows - queries_from
    step = min(flat.query_chunk_rows(plan.rows), max(1, -(-queries // plan.tasks)))
    ranges = [(s, min(s + step, plan.rows)) for s in range(queries_from, plan.rows, step)]
    shared = faiss.serialize_index(index) if plan.use_ray else index
    args = [(start, stop, rules) for start, stop in ranges]
    return plan.run(flat.range_search_rows, [shared, hashes], args)


def _ivf_tasks(source, queries_from, plan, rules, hashes, config):
    started = time.perf_counter()
    centroids = ivf.train_centroids(source, plan.nlist, seed=config.seed)
    trained = time.perf_counter()
    layout = ivf.build_layout(source, centroids, nprobe=plan.nprobe, queries_from=queries_from)
    LOG.info("ivf over %d rows: %d lists trained in %.1f s, rows placed and probes assigned (nprobe %d) "
             "in %.1f s", plan.rows, plan.nlist, trained - started, plan.nprobe,
             time.perf_counter() - trained)  # fmt: skip
    cuts = _balanced_cuts(layout, plan.tasks)
    args = [(a, b, rules) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    return plan.run(ivf.search_lists, [*layout.arrays(), hashes], args)


def _balanced_cuts(layout: ivf.IvfLayout, tasks: int) -> list[int]:
    """List boundaries splitting the work (queries x rows per list) into ``tasks`` near-equal parts."""
    work = np.diff(layout.bounds) * np.diff(layout.probe_bounds)
    total = np.cumsum(work, dtype=np.float64)
    if tasks <= 1 or total[-1] == 0:
        return [0, layout.nlist]
    targets = total[-1] * np.arange(1, tasks) / tasks
    inner = np.searchsorted(total, targets, side="right") + 1
    return sorted({0, layout.nlist, *np.minimum(inner, layout.nlist).tolist()})


class _Collector:
    """Accumulates task results, applying the cap per query whenever they pass a budget.

    The budget is ``COLLECT_BUDGET`` pairs or twice what the last reduction kept, whichever is larger, so
    reductions stay rare (amortised linear) and what is held stays within about twice the final result.
    """

    def __init__(self, max_neighbours: int | None):
        self.max_neighbours = max_neighbours
        self.parts: list[Pairs] = []
        self.size = 0
        self.budget = COLLECT_BUDGET

    def add(self, part: Pairs) -> None:
        self.parts.append(part)
        self.size += len(part)
        if self.size > self.budget and self.max_neighbours is not None:
            reduced = self._reduce()
            self.parts, self.size = [reduced], len(reduced)
            self.budget = max(COLLECT_BUDGET, 2 * len(reduced))

    def _reduce(self) -> Pairs:
        # directed edges stay directed until the end: the cap is on each query's own partners
        return cap_per_query(Pairs.concat(self.parts), self.max_neighbours)

    def result(self) -> Pairs:
        return self._reduce().canonical()


@dataclass(frozen=True)
class Matches:
    """Query row ``query[i]`` is most similar to base row ``base[i]`` (cosine ``similarity[i]``)."""

    query: np.ndarray  # int64
    base: np.ndarray  # int64
    similarity: np.ndarray  # float32

    def __len__(self) -> int:
        return int(self.query.shape[0])


def nearest_matches(
    base: np.ndarray, queries: VectorSource, threshold: float, config: SearchConfig | None = None
) -> Matches:
    """For each query row, its most similar base row where the cosine is >= ``threshold``.

    ``base`` is held in one index (``IndexFlatIP`` up to ``exact_max_vectors`` rows, else faiss's
    ``IndexIVFFlat`` with ``nprobe`` lists probed); queries stream chunk by chunk, as Ray tasks sharing the
    serialised index when the plan says so.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    config = config or SearchConfig(threshold=threshold)
    base = np.ascontiguousarray(base, dtype=np.float32)
    if base.ndim != 2 or base.shape[1] != queries.dim:
        raise ValueError(f"base vectors of shape {base.shape} for queries of dimension {queries.dim}")
    if len(base) == 0 or len(queries) == 0:
        return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    plan = plan_search(len(queries), config)
    index = _base_index(base, config)
    shared = faiss.serialize_index(index) if plan.use_ray else index
    args = ((start, chunk, threshold) for start, chunk in queries.chunks(CHUNK_ROWS))
    parts = list(plan.run(_nearest_chunk, [shared], args))
    query = np.concatenate([p.query for p in parts])
    order = np.argsort(query, kind="stable")
    return Matches(
        query[order],
        np.concatenate([p.base for p in parts])[order],
        np.concatenate([p.similarity for p in parts])[order],
    )


def _base_index(base: np.ndarray, config: SearchConfig) -> faiss.Index:
    if len(base) <= config.exact_max_vectors or config.method == "exact":
        return flat.flat_index(ArrayVectors(base))
    nlist = min(config.nlist or ivf.ivf_lists(len(base)), len(base))
    centroids = ivf.train_centroids(ArrayVectors(base), nlist, seed=config.seed)
    quantizer = faiss.IndexFlatIP(base.shape[1])
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add(base)
    index.nprobe = min(config.nprobe, nlist)
    return index


def _nearest_chunk(
    index: faiss.Index | np.ndarray, start: int, chunk: np.ndarray, threshold: float
) -> Matches:
    """One task: each row of ``chunk`` (rows ``start..``) against the index, kept when >= threshold."""
    similarity, nearest = flat.as_index(index).search(np.ascontiguousarray(chunk, dtype=np.float32), 1)
    keep = (nearest[:, 0] >= 0) & (similarity[:, 0] >= threshold - SIMILARITY_TOLERANCE)
    rows = np.arange(start, start + len(chunk), dtype=np.int64)
    return Matches(rows[keep], nearest[keep, 0].astype(np.int64), similarity[keep, 0].astype(np.float32))
