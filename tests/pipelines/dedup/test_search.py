"""Pair search: planted near-duplicates found, distinct vectors untouched; exact vs IVF; incremental; Ray."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from pipelines.dedup import flat, ivf
from pipelines.dedup.groups import connected_components
from pipelines.dedup.pairs import Pairs
from pipelines.dedup.search import SearchConfig, find_new_pairs, find_pairs, nearest_matches, plan_search
from pipelines.dedup.vectors import ArrayVectors


def test_exact_search_finds_exactly_the_planted_pairs(planted) -> None:
    data = planted(3000, 64, 150, low=0.91)
    pairs = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="exact"))
    assert pairs.as_set() == set(data.pairs)
    assert np.all(pairs.left < pairs.right)
    found = dict(
        zip(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True), pairs.similarity, strict=True)
    )
    for pair, cosine in data.pairs.items():
        assert found[pair] == pytest.approx(cosine, abs=1e-5)


def test_threshold_is_inclusive_and_pairs_below_it_are_left(planted) -> None:
    data = planted(2000, 64, 100, low=0.80, high=0.99, seed=1)
    pairs = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="exact"))
    assert pairs.as_set() == {p for p, c in data.pairs.items() if c >= 0.9}
    assert 0 < len(pairs) < len(data.pairs)
    # a bitwise copy matches at threshold 1, though its float32 inner product may round below 1
    x = data.vectors.copy()
    x[1] = x[0]
    assert (0, 1) in find_pairs(ArrayVectors(x), SearchConfig(threshold=1.0, method="exact")).as_set()


def test_exact_search_in_small_chunks_gives_the_same_pairs(planted, monkeypatch) -> None:
    data = planted(1500, 32, 80, low=0.92, seed=2)
    whole = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="exact"))
    monkeypatch.setattr(flat, "RANGE_RESULTS_BUDGET", 1500 * 7)  # 7 queries per range search
    assert flat.query_chunk_rows(1500) == 7
    chunked = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="exact"))
    assert chunked.as_set() == whole.as_set() == set(data.pairs)


def test_ivf_finds_the_planted_pairs_and_nothing_else(planted) -> None:
    data = planted(8000, 64, 400, low=0.9, seed=3)
    config = SearchConfig(threshold=0.9, method="ivf")
    plan = plan_search(8000, config)
    assert plan.method == "ivf" and plan.nlist == 256 and plan.nprobe == 16
    found = find_pairs(ArrayVectors(data.vectors), config).as_set()
    exact = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="exact")).as_set()
    assert exact == set(data.pairs)
    assert found <= exact  # IVF only misses pairs; every pair it reports is real
    assert len(found) / len(exact) >= 0.97
    one_probe = find_pairs(ArrayVectors(data.vectors), SearchConfig(threshold=0.9, method="ivf", nprobe=1))
    assert len(one_probe.as_set()) < len(found)  # recall comes from probing more lists


def test_ivf_list_by_list_search_equals_faiss_range_search(planted, monkeypatch) -> None:
    data = planted(4000, 32, 200, low=0.9, seed=4)
    source = ArrayVectors(data.vectors)
    nlist, nprobe = 64, 4
    centroids = ivf.train_centroids(source, nlist)
    quantizer = faiss.IndexFlatIP(32)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, 32, nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add(data.vectors)
    index.nprobe = nprobe
    limits, _, partners = index.range_search(data.vectors, 0.9 - 1e-6)
    reference = {
        (min(q, int(p)), max(q, int(p)))
        for q in range(4000)
        for p in partners[limits[q] : limits[q + 1]]
        if q != int(p)
    }
    monkeypatch.setattr(ivf, "TILE_ROWS", 5)  # tiles much smaller than the lists: same result
    layout = ivf.build_layout(source, centroids, nprobe=nprobe, chunk_rows=333)
    config = SearchConfig(threshold=0.9, max_neighbours=None)
    mine = ivf.search_lists(*layout.arrays(), None, 0, nlist, config.rules())
    assert mine.as_set() == reference
    assert 0 < len(reference) < len(data.pairs)  # a few probes miss some pairs: the comparison is not trivial


def test_ivf_is_deterministic(planted) -> None:
    data = planted(3000, 32, 100, low=0.9, seed=5)
    config = SearchConfig(threshold=0.9, method="ivf", nprobe=2)
    a = find_pairs(ArrayVectors(data.vectors), config)
    b = find_pairs(ArrayVectors(data.vectors), config)
    assert np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_incremental_search_compares_only_new_rows(planted, method: str) -> None:
    data = planted(4000, 64, 300, low=0.92, seed=6)
    config = SearchConfig(threshold=0.9, method=method)
    old, new = data.vectors[:3000], data.vectors[3000:]
    pairs = find_new_pairs(ArrayVectors(old), ArrayVectors(new), config)
    assert np.all(pairs.right >= 3000)  # canonical (left < right): every pair has a new row
    with_new = {p for p in data.pairs if p[1] >= 3000}
    assert {p for p in data.pairs if p[1] < 3000}  # old-old pairs exist, and are not reported
    if method == "exact":
        assert pairs.as_set() == with_new
    else:
        assert pairs.as_set() <= with_new and len(pairs.as_set()) >= 0.95 * len(with_new)
    assert len(find_new_pairs(ArrayVectors(data.vectors), ArrayVectors(new[:0]), config)) == 0


def test_phash_restriction_keeps_only_pairs_whose_images_are_close(planted) -> None:
    data = planted(500, 32, 40, low=0.95, seed=7)
    hashes = np.random.default_rng(7).integers(0, 2**63, size=500, dtype=np.uint64)  # ~32 bits apart
    confirmed = sorted(data.pairs)[:10]
    for a, b in confirmed:
        hashes[b] = hashes[a] ^ np.uint64(0b101)  # two bits apart
    config = SearchConfig(threshold=0.9, method="exact", max_hamming=4)
    assert find_pairs(ArrayVectors(data.vectors), config, phashes=hashes).as_set() == set(confirmed)
    unrestricted = SearchConfig(threshold=0.9, method="exact")
    assert find_pairs(ArrayVectors(data.vectors), unrestricted, phashes=hashes).as_set() == set(data.pairs)


def test_a_huge_cluster_stays_one_group_within_the_neighbour_cap(planted) -> None:
    rng = np.random.default_rng(8)
    base = planted(1000, 32, 0, low=0.9, seed=8).vectors
    centre = base[0]
    cluster = np.stack([centre + 0.01 * rng.standard_normal(32).astype(np.float32) for _ in range(400)])
    x = np.concatenate([base, cluster / np.linalg.norm(cluster, axis=1, keepdims=True)])
    for method in ("exact", "ivf"):
        pairs = find_pairs(ArrayVectors(x), SearchConfig(threshold=0.95, method=method, max_neighbours=8))
        assert len(pairs) <= 401 * 8  # not 401 * 400 / 2
        labels = connected_components(len(x), pairs.left, pairs.right)
        assert len(set(labels[1000:].tolist()) | {labels[0]}) == 1  # the centre and its 400 copies: one group
        assert len(set(labels[1:1000].tolist())) == 999  # everything else alone


def test_ray_is_never_started_by_the_search() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("Ray was started by another test of this session")
    with pytest.raises(RuntimeError, match="needs a running Ray"):
        plan_search(10, SearchConfig(threshold=0.9, parallel="ray"))
    assert not plan_search(10**6, SearchConfig(threshold=0.9, ray_min_vectors=10)).use_ray
    assert not ray.is_initialized()


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_ray_tasks_give_the_driver_result(planted, ray_local, method: str) -> None:
    data = planted(6000, 32, 300, low=0.9, seed=9)
    config = SearchConfig(threshold=0.9, method=method, parallel="ray", nprobe=4)
    driver = find_pairs(ArrayVectors(data.vectors), SearchConfig(**{**config.__dict__, "parallel": "driver"}))
    assert plan_search(6000, config).use_ray
    on_ray = find_pairs(ArrayVectors(data.vectors), config)
    assert np.array_equal(on_ray.left, driver.left) and np.array_equal(on_ray.right, driver.right)
    assert np.allclose(on_ray.similarity, driver.similarity, atol=1e-6)
    assert len(driver.as_set() & set(data.pairs)) >= 0.9 * len(data.pairs)


def test_auto_uses_ray_only_for_large_inputs_when_ray_runs(ray_local) -> None:
    config = SearchConfig(threshold=0.9, ray_min_vectors=1000)
    assert not plan_search(999, config).use_ray
    assert plan_search(1000, config).use_ray
    assert not plan_search(10**6, SearchConfig(threshold=0.9, parallel="driver")).use_ray
    assert plan_search(10**6, config).method == "ivf"
    assert plan_search(20_000, config).method == "exact"


def test_nearest_matches_finds_each_querys_best_base_row(planted, near_copy) -> None:
    data = planted(600, 32, 0, low=0.9, seed=10)
    rng = np.random.default_rng(10)
    base = data.vectors[:100]
    queries = data.vectors[100:].copy()
    queries[7] = near_copy(rng, base[42], 0.97)
    queries[9] = near_copy(rng, base[3], 0.93)
    for config in (
        SearchConfig(threshold=0.95),
        SearchConfig(threshold=0.95, exact_max_vectors=50, nprobe=8),
    ):
        matches = nearest_matches(base, ArrayVectors(queries), 0.95, config)
        assert matches.query.tolist() == [7] and matches.base.tolist() == [42]
        assert matches.similarity[0] == pytest.approx(0.97, abs=1e-5)
    assert nearest_matches(base, ArrayVectors(queries), 0.9).query.tolist() == [7, 9]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", 0.0, "threshold must be in"),
        ("threshold", 1.01, "threshold must be in"),
        ("nprobe", 0, "nprobe must be at least 1"),
        ("max_neighbours", 0, "max_neighbours"),
        ("max_hamming", 65, "max_hamming"),
        ("method", "hnsw", "method must be"),
    ],
)
def test_bad_configuration_is_named(field: str, value, message: str) -> None:
    settings = {"threshold": 0.9, field: value}
    with pytest.raises(ValueError, match=message):
        SearchConfig(**settings)


def test_pairs_canonical_keeps_each_undirected_pair_once() -> None:
    directed = Pairs(
        np.array([3, 1, 2, 5, 5]),
        np.array([1, 3, 2, 0, 0]),
        np.array([0.91, 0.92, 1.0, 0.95, 0.95], np.float32),
    )
    c = directed.canonical()
    assert list(zip(c.left.tolist(), c.right.tolist(), strict=True)) == [(0, 5), (1, 3)]
    assert c.similarity.tolist() == pytest.approx([0.95, 0.92])
