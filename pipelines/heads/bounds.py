"""What the filter needs from head scores: which scores are unusable, and one home for the reason strings.

A head returns NaN or inf as it computed them (a head fed a broken embedding, a degenerate weight file);
``bad_scores`` finds them so that those records become error rows with ``bad_score_reason``, and
``bound_reasons`` words why a usable score falls outside a head's ``min`` / ``max``, e.g.
``aesthetic 4.12 < min 5.0`` or ``punsafe 0.93 > max 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bad_scores(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Boolean mask of the scores that are NaN or infinite (the records to turn into error rows)."""
    return ~np.isfinite(np.asarray(values, dtype=np.float64))


def bad_score_reason(column: str, value: float) -> str:
    """The error reason of a record whose ``column`` score is not finite, e.g. ``aesthetic score is nan``."""
    return f"{column} score is {value} (not a finite number)"


def _shown(value: float, bound: float) -> str:
    """``value`` with three significant digits, or with all of them where three would read as the bound."""
    short = f"{value:.3g}"
    return repr(float(value)) if float(short) == bound else short


def bound_reasons(column: str, value: float | None, min: float | None, max: float | None) -> list[str]:
    """Why ``value`` of ``column`` is outside ``[min, max]`` (either bound may be None): an empty list when it
    is inside, or when there is no score to judge (None). A non-finite value is outside every bound."""
    if value is None:
        return []
    if not math.isfinite(value):
        return [bad_score_reason(column, value)] if min is not None or max is not None else []
    reasons = []
    if min is not None and value < min:
        reasons.append(f"{column} {_shown(value, min)} < min {min!r}")
    if max is not None and value > max:
        reasons.append(f"{column} {_shown(value, max)} > max {max!r}")
    return reasons


def bound_rules(column: str, value: float | None, min: float | None, max: float | None) -> list[str]:
    """The rule of each reason ``bound_reasons`` gives, without the value (``aesthetic < min 5.0``): what a
    job's summary counts rejections by."""
    if value is None or (min is None and max is None):
        return []
    if not math.isfinite(value):
        return [f"{column} not a finite number"]
    rules = []
    if min is not None and value < min:
        rules.append(f"{column} < min {min!r}")
    if max is not None and value > max:
        rules.append(f"{column} > max {max!r}")
    return rules
