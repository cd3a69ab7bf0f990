"""The clip-retrieval index check accepts what a correct index may do (an identical twin found first) and
refuses what it may not (a different vector found first)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import faiss
import numpy as np

CHECK = Path(__file__).resolve().parents[2] / "infra" / "clip-retrieval" / "check_index.py"


def _check_module():
    spec = importlib.util.spec_from_file_location("check_index", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("float32")


def test_identical_twins_found_first_are_accepted():
    vectors = _unit(np.random.default_rng(0).normal(size=(50, 16)))
    vectors[[7, 31]] = vectors[3]  # exact duplicate images: three identical embeddings
    index = faiss.IndexFlatIP(16)
    index.add(vectors)
    _, ids = index.search(vectors, 1)
    assert (ids[:, 0] != np.arange(50)).any(), "a twin came first: the case the old check refused"
    assert _check_module().wrong_first_hits(vectors, ids[:, 0]) == []


def test_a_different_vector_found_first_is_refused():
    vectors = _unit(np.random.default_rng(1).normal(size=(20, 16)))
    first = np.arange(20)
    first[5] = 6  # an index that returns a neighbour instead of the record itself
    assert _check_module().wrong_first_hits(vectors, first) == [5]
