"""Grouping and decisions: the best record of each group stays; deterministic, idempotent, incremental."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.dedup.groups import Removal, connected_components, group_removals, near_duplicate_reason
from pipelines.dedup.pairs import Pairs
from pipelines.dedup.search import SearchConfig, find_new_pairs, find_pairs
from pipelines.dedup.vectors import ArrayVectors

EXACT = SearchConfig(threshold=0.9, method="exact")


def components_by_search(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Smallest row of each row's component, by breadth-first search (the test's own reference)."""
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    label = [-1] * n
    for start in range(n):
        if label[start] >= 0:
            continue
        seen, frontier = {start}, [start]
        while frontier:
            frontier = [m for node in frontier for m in neighbours[node] if m not in seen]
            seen.update(frontier)
        for node in seen:
            label[node] = min(seen)
    return label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_union_find_matches_breadth_first_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    edges = [tuple(e) for e in rng.integers(0, n, size=(250, 2)).tolist()]
    edges += [(i, i + 1) for i in range(100, 160)]  # a long chain
    left, right = np.array([a for a, _ in edges]), np.array([b for _, b in edges])
    assert connected_components(n, left, right).tolist() == components_by_search(n, edges)


def group_data(near_copy):
    """Three groups planted among distinct vectors: a triple, a pair and a chain a~b~c with a and c apart."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1] = near_copy(rng, x[0], 0.97)
    x[2] = near_copy(rng, x[0], 0.95)
    x[11] = near_copy(rng, x[10], 0.99)
    # chain in one plane: 20 ~ 21 ~ 22 at angle t apart (cos t = 0.93); 20 and 22 at 2t (cos 0.7298)
    u = x[20].astype(np.float64)
    w = near_copy(rng, x[20], 0.0).astype(np.float64)
    t = np.arccos(0.93)
    x[21] = (np.cos(t) * u + np.sin(t) * w).astype(np.float32)
    x[22] = (np.cos(2 * t) * u + np.sin(2 * t) * w).astype(np.float32)
    keys = [f"k{i:02d}" for i in range(40)]
    scores: list[float | None] = [0.5] * 40
    scores[1] = 0.9  # best of the triple
    scores[10] = scores[11] = 0.7  # tie: the smaller key wins
    scores[22] = 0.8  # the chain's best, far from 20
    scores[21] = None
    return keys, scores, x


def test_best_record_of_each_group_is_kept(near_copy) -> None:
    keys, scores, x = group_data(near_copy)
    pairs = find_pairs(ArrayVectors(x), EXACT)
    assert (20, 22) not in pairs.as_set() and {(20, 21), (21, 22)} <= pairs.as_set()
    removals = group_removals(keys, scores, pairs, ArrayVectors(x))
    decided = {r.key: r.kept_key for r in removals}
    assert decided == {"k00": "k01", "k02": "k01", "k11": "k10", "k20": "k22", "k21": "k22"}
    by_key = {r.key: r for r in removals}
    assert by_key["k00"].similarity == pytest.approx(0.97, abs=1e-5)
    assert by_key["k21"].similarity >= 0.9
    assert by_key["k20"].similarity == pytest.approx(float(x[20] @ x[22]), abs=1e-5)  # through the chain
    assert by_key["k20"].similarity < 0.9
    assert by_key["k00"].reason == "near-duplicate of k01 (cosine 0.970)"
    assert [r.key for r in removals] == sorted(decided)  # row order


def test_decisions_do_not_depend_on_pair_order(near_copy) -> None:
    keys, scores, x = group_data(near_copy)
    pairs = find_pairs(ArrayVectors(x), EXACT)
    order = np.random.default_rng(1).permutation(len(pairs))
    swapped = Pairs(pairs.right[order], pairs.left[order], pairs.similarity[order])
    assert group_removals(keys, scores, swapped, ArrayVectors(x)) == group_removals(
        keys, scores, pairs, ArrayVectors(x)
    )


def test_second_run_on_survivors_removes_nothing(planted) -> None:
    data = planted(3000, 64, 300, low=0.9, seed=3)
    keys = [f"r{i}" for i in range(3000)]
    scores = np.random.default_rng(3).random(3000).tolist()
    vectors = ArrayVectors(data.vectors)
    removals = group_removals(keys, scores, find_pairs(vectors, EXACT), vectors)
    assert len(removals) == 300  # each planted pair loses one record
    for (a, b), _ in data.pairs.items():
        worse = a if (scores[a], keys[b]) < (scores[b], keys[a]) else b
        assert keys[worse] in {r.key for r in removals}
    removed = {r.key for r in removals}
    keep = [i for i, k in enumerate(keys) if k not in removed]
    survivors = ArrayVectors(data.vectors[keep])
    again = group_removals(
        [keys[i] for i in keep], [scores[i] for i in keep], find_pairs(survivors, EXACT), survivors
    )
    assert again == []


def test_distinct_records_are_untouched(planted) -> None:
    data = planted(2000, 64, 0, low=0.9, seed=4)
    vectors = ArrayVectors(data.vectors)
    assert (
        group_removals([str(i) for i in range(2000)], [0.0] * 2000, find_pairs(vectors, EXACT), vectors) == []
    )


def incremental_case(near_copy):
    """Old rows 0..5 (row 1 removed earlier in favour of row 0), new rows 6..11."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1] = near_copy(rng, x[0], 0.96)  # old, removed earlier for old 0
    x[6] = near_copy(rng, x[0], 0.95)  # new copy of a kept old record, scoring higher than it
    x[7] = near_copy(rng, x[1], 0.99)  # new copy of the removed old record
    x[8] = near_copy(rng, x[3], 0.98)  # new copy of kept old 3 ...
    x[9] = near_copy(rng, x[8], 0.97)  # ... and a new copy of that copy
    x[11] = near_copy(rng, x[10], 0.96)  # two new records duplicating each other only
    keys = [f"old{i}" for i in range(6)] + [f"new{i}" for i in range(6, 12)]
    scores = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.99, 0.99, 0.99, 0.99, 0.2, 0.3]
    earlier = [Removal("old1", "old0", 0.96), Removal("gone", "elsewhere", 0.95)]
    return keys, scores, x, earlier


def test_incremental_run_never_changes_old_fates(near_copy) -> None:
    keys, scores, x, earlier = incremental_case(near_copy)
    pairs = find_new_pairs(ArrayVectors(x[:6]), ArrayVectors(x[6:]), EXACT)
    removals = group_removals(keys, scores, pairs, ArrayVectors(x), earlier=earlier, new_from=6)
    decided = {r.key: r.kept_key for r in removals}
    assert decided == {
        "new6": "old0",  # a new record loses to a kept old one, whatever it scores
        "new7": "old0",  # a copy of a removed old record goes to the record that one was removed for
        "new8": "old3",
        "new9": "old3",
        "new10": "new11",  # among new records only: the best new one stays
    }
    assert all(r.key.startswith("new") for r in removals)
    # nothing new: nothing to decide, and the earlier decisions are not repeated
    none_new = find_new_pairs(ArrayVectors(x), ArrayVectors(x[:0]), EXACT)
    assert group_removals(keys, scores, none_new, ArrayVectors(x), earlier=earlier, new_from=12) == []


def test_incremental_run_ignores_old_old_pairs(near_copy) -> None:
    keys, scores, x, earlier = incremental_case(near_copy)
    everything = find_pairs(ArrayVectors(x), EXACT)  # includes old0~old1
    only_new = find_new_pairs(ArrayVectors(x[:6]), ArrayVectors(x[6:]), EXACT)
    assert group_removals(keys, scores, everything, ArrayVectors(x), earlier=earlier, new_from=6) == (
        group_removals(keys, scores, only_new, ArrayVectors(x), earlier=earlier, new_from=6)
    )


def test_incremental_runs_add_up_to_a_run_over_everything_when_old_wins_anyway(planted) -> None:
    data = planted(3000, 64, 200, low=0.92, seed=6)
    keys = [f"r{i:05d}" for i in range(3000)]
    scores = [1.0 if i < 2000 else 0.5 for i in range(3000)]  # old records score higher: same winners
    vectors = ArrayVectors(data.vectors)
    fresh = group_removals(keys, scores, find_pairs(vectors, EXACT), vectors)
    old = ArrayVectors(data.vectors[:2000])
    first = group_removals(keys[:2000], scores[:2000], find_pairs(old, EXACT), old)
    pairs = find_new_pairs(old, ArrayVectors(data.vectors[2000:]), EXACT)
    second = group_removals(keys, scores, pairs, vectors, earlier=first, new_from=2000)
    assert {r.key for r in first} | {r.key for r in second} == {r.key for r in fresh}


def test_bad_input_is_named(near_copy) -> None:
    keys, scores, x, earlier = incremental_case(near_copy)
    pairs = Pairs.empty()
    with pytest.raises(ValueError, match="must match"):
        group_removals(keys[:-1], scores, pairs, ArrayVectors(x))
    with pytest.raises(ValueError, match="unique"):
        group_removals(["a"] * 12, scores, pairs, ArrayVectors(x))
    with pytest.raises(ValueError, match="new_from"):
        group_removals(keys, scores, pairs, ArrayVectors(x), new_from=13)
    with pytest.raises(ValueError, match="'new7', which is a new record"):
        group_removals(
            keys, scores, pairs, ArrayVectors(x), earlier=[Removal("new7", "old0", 1.0)], new_from=6
        )


def test_reason_format() -> None:
    assert near_duplicate_reason("k1", 0.97349) == "near-duplicate of k1 (cosine 0.973)"
