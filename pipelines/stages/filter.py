"""Stage 4: keep records whose CLIP score is within bounds; the others become rejected rows (never dropped)."""

from __future__ import annotations

import pandas as pd

from pipelines import records as r


def filter_batch(batch: pd.DataFrame, *, min_score: float | None, max_score: float | None) -> pd.DataFrame:
    """Mark ok rows outside [min_score, max_score] as rejected, with the reason."""
    out = batch.copy()
    status, reasons = out[r.STATUS].tolist(), out[r.REASON].tolist()
    scores = out[r.CLIP_SCORE].tolist() if r.CLIP_SCORE in out else [None] * len(out)
    for i, score in enumerate(scores):
        if status[i] != r.Status.OK.value or r.missing(score):
            continue
        if min_score is not None and score < min_score:
            status[i], reasons[i] = r.Status.REJECTED.value, f"clip_score below {min_score}"
        elif max_score is not None and score > max_score:
            status[i], reasons[i] = r.Status.REJECTED.value, f"clip_score above {max_score}"
    out[r.STATUS], out[r.REASON] = status, reasons
    return out
