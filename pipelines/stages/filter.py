"""Stage 4 (in the writer actors, just before a unit is written; for input heads, in the input judges): keep
records whose scores are within their bounds (CLIP score, every score head) and, with ``keep_best``, among the
best samples of their input; the others become rejected rows (never dropped).

A rejected record's reason names every bound it fails, with its value (``aesthetic 4.12 < min 5.0; punsafe
0.93 > max 0.5``); its rules (``aesthetic < min 5.0``, ...: the bound without the value) are what the summary
counts, one count per rule a record fails.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.heads.bounds import bound_reasons, bound_rules


@dataclass(frozen=True)
class Bound:
    """A score column and the range a kept record's score must lie in (either end may be open)."""

    column: str
    min: float | None = None
    max: float | None = None

    @property
    def active(self) -> bool:
        return self.min is not None or self.max is not None


@dataclass(frozen=True)
class FilterSpec:
    """The job's filter: score bounds and best-of-n (by CLIP score)."""

    bounds: tuple[Bound, ...] = ()
    keep_best: int | None = None

    @classmethod
    def of(cls, config: PipelineConfig, applies_to: str = "output") -> FilterSpec:
        """The bounds judging the output images (CLIP and the output heads, and best-of-n), or the input
        images (the input heads)."""
        heads = tuple(Bound(h.column or h.name, h.min, h.max) for h in config.curation.heads_for(applies_to))
        if applies_to == "input":
            return cls(heads)
        clip = Bound(r.CLIP_SCORE, config.clip.min_score, config.clip.max_score)
        return cls((clip, *heads), config.clip.keep_best)


def filter_batch(batch: pd.DataFrame, spec: FilterSpec) -> pd.DataFrame:
    """Mark ok rows outside any bound as rejected (every failed bound named), then, with ``keep_best``, every
    ok row that is not among the ``keep_best`` highest-CLIP-scoring ok samples of its input (ties: the lower
    sample first).

    A unit holds all samples of its inputs (preprocess draws them inside the unit), so ranking per batch
    is ranking per input."""
    out = batch.copy()
    status, reasons, rules = out[r.STATUS].tolist(), out[r.REASON].tolist(), _existing_rules(out)
    judged = [s == r.Status.OK.value for s in status]
    failed: list[list[tuple[str, str]]] = [[] for _ in status]  # (reason, rule) of each failed bound
    for bound in (b for b in spec.bounds if b.active and b.column in out):
        for i, value in enumerate(out[bound.column].tolist()):
            if judged[i] and not r.missing(value):
                shown = bound_reasons(bound.column, float(value), bound.min, bound.max)
                failed[i] += zip(
                    shown, bound_rules(bound.column, float(value), bound.min, bound.max), strict=True
                )
    for i, fails in enumerate(failed):
        if fails:
            status[i] = r.Status.REJECTED.value
            reasons[i] = "; ".join(reason for reason, _ in fails)
            rules[i] = [rule for _, rule in fails]
    if spec.keep_best is not None and r.CLIP_SCORE in out:
        rule = f"clip_score not among the best {spec.keep_best} samples of its input"
        scores = out[r.CLIP_SCORE].tolist()
        for i in _below_best(out, status, scores, spec.keep_best):
            status[i], reasons[i], rules[i] = r.Status.REJECTED.value, rule, [rule]
    out[r.STATUS], out[r.REASON], out[r.REJECT_RULES] = status, reasons, rules
    return out


def reject_records(batch: pd.DataFrame, rows: Sequence[int], reason: str, rule: str) -> pd.DataFrame:
    """``batch`` with the ok rows at positions ``rows`` rejected for ``reason`` (counted under ``rule``)."""
    out = batch.copy()
    status, reasons, rules = out[r.STATUS].tolist(), out[r.REASON].tolist(), _existing_rules(out)
    for i in rows:
        if status[i] == r.Status.OK.value:
            status[i], reasons[i], rules[i] = r.Status.REJECTED.value, reason, [rule]
    out[r.STATUS], out[r.REASON], out[r.REJECT_RULES] = status, reasons, rules
    return out


def _existing_rules(batch: pd.DataFrame) -> list[list[str]]:
    if r.REJECT_RULES not in batch:
        return [[] for _ in range(len(batch))]
    return [[] if r.missing(v) else list(v) for v in batch[r.REJECT_RULES]]


def _below_best(batch: pd.DataFrame, status: list[str], scores: list, keep: int) -> list[int]:
    """Row positions of scored ok rows ranked below ``keep`` within their input."""
    by_input: dict[str, list[int]] = defaultdict(list)
    for i, input_key in enumerate(batch[r.INPUT_KEY]):
        if status[i] == r.Status.OK.value and not r.missing(scores[i]):
            by_input[input_key].append(i)
    samples = batch[r.SAMPLE].tolist()
    below = []
    for rows in by_input.values():
        ranked = sorted(rows, key=lambda i: (-scores[i], samples[i]))
        below += ranked[keep:]
    return sorted(below)
