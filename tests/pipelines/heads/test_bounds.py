"""Reasons for scores outside a head's bounds, and the mask of unusable scores."""

from __future__ import annotations

import math

import numpy as np

from pipelines.heads import bad_score_reason, bad_scores, bound_reasons


def test_reasons_name_column_value_and_bound():
    assert bound_reasons("aesthetic", 4.1234, 5.0, None) == ["aesthetic 4.12 < min 5.0"]
    assert bound_reasons("punsafe", 0.93, None, 0.5) == ["punsafe 0.93 > max 0.5"]
    assert bound_reasons("aesthetic", 6.0, 5.0, 8.0) == []
    assert bound_reasons("aesthetic", 5.0, 5.0, 5.0) == []  # bounds are inclusive
    assert bound_reasons("aesthetic", 4.0, None, None) == []


def test_a_value_that_rounds_to_the_bound_shows_all_its_digits():
    assert bound_reasons("punsafe", 0.5000004, None, 0.5) == ["punsafe 0.5000004 > max 0.5"]
    assert bound_reasons("aesthetic", 4.99999, 5.0, None) == ["aesthetic 4.99999 < min 5.0"]


def test_missing_and_non_finite_scores():
    assert bound_reasons("aesthetic", None, 5.0, None) == []
    assert bound_reasons("aesthetic", math.nan, 5.0, None) == ["aesthetic score is nan (not a finite number)"]
    assert bound_reasons("punsafe", math.inf, None, 0.5) == ["punsafe score is inf (not a finite number)"]
    assert bad_score_reason("punsafe", -math.inf) == "punsafe score is -inf (not a finite number)"
    mask = bad_scores(np.array([0.2, np.nan, np.inf, -np.inf, 7.0], np.float32))
    assert mask.tolist() == [False, True, True, True, False]
    assert bad_scores([]).shape == (0,)
