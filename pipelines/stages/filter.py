"""Stage 4 (in the writer actors, just before a unit is written): keep records whose CLIP score is within
bounds and, with ``keep_best``, among the best samples of their input; the others become rejected rows with
their reason (never dropped)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig


@dataclass(frozen=True)
class FilterSpec:
    """The job's filter: CLIP score bounds and best-of-n."""

    min_score: float | None = None
    max_score: float | None = None
    keep_best: int | None = None

    @classmethod
    def of(cls, config: PipelineConfig) -> FilterSpec:
        clip = config.clip
        return cls(clip.min_score, clip.max_score, clip.keep_best)


def filter_batch(batch: pd.DataFrame, spec: FilterSpec) -> pd.DataFrame:
    """Mark ok rows outside [min_score, max_score] as rejected, then, with ``keep_best``, every ok row that
    is not among the ``keep_best`` highest-scoring ok samples of its input (ties: the lower sample first).

    A unit holds all samples of its inputs (preprocess draws them inside the unit), so ranking per batch
    is ranking per input."""
    min_score, max_score, keep_best = spec.min_score, spec.max_score, spec.keep_best
    out = batch.copy()
    status, reasons = out[r.STATUS].tolist(), out[r.REASON].tolist()
    scores = out[r.CLIP_SCORE].tolist() if r.CLIP_SCORE in out else [None] * len(out)
    scored = [status[i] == r.Status.OK.value and not r.missing(scores[i]) for i in range(len(out))]
    for i, score in enumerate(scores):
        if not scored[i]:
            continue
        if min_score is not None and score < min_score:
            status[i], reasons[i] = r.Status.REJECTED.value, f"clip_score below {min_score}"
        elif max_score is not None and score > max_score:
            status[i], reasons[i] = r.Status.REJECTED.value, f"clip_score above {max_score}"
    if keep_best is not None:
        reason = f"clip_score not among the best {keep_best} samples of its input"
        for i in _below_best(out, status, scores, scored, keep_best):
            status[i], reasons[i] = r.Status.REJECTED.value, reason
    out[r.STATUS], out[r.REASON] = status, reasons
    return out


def _below_best(
    batch: pd.DataFrame, status: list[str], scores: list, scored: list[bool], keep: int
) -> list[int]:
    """Row positions of scored ok rows ranked below ``keep`` within their input."""
    by_input: dict[str, list[int]] = defaultdict(list)
    for i, input_key in enumerate(batch[r.INPUT_KEY]):
        if scored[i] and status[i] == r.Status.OK.value:
            by_input[input_key].append(i)
    samples = batch[r.SAMPLE].tolist()
    below = []
    for rows in by_input.values():
        ranked = sorted(rows, key=lambda i: (-scores[i], samples[i]))
        below += ranked[keep:]
    return sorted(below)
