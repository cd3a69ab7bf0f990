"""The optional invisible watermark (``provenance.watermark``), in the first stage after generation that has a
CPU to spare: the CLIP actors (so scores and embeddings are of the image as written), else the writers.

Every generated image of a job carries the same payload, derived from the job's fingerprint; an image that
cannot keep the mark (``pipelines.provenance.watermark``: too small, saturated) becomes an error row: a
record is never written without the marks its job asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.pixels import from_bytes, to_bytes
from pipelines.provenance.watermark import WatermarkError, embed_watermark, watermark_payload


@dataclass(frozen=True)
class WatermarkSpec:
    """The job's watermark: its payload and the method."""

    payload: bytes
    method: str = "dwtDctSvd"

    @classmethod
    def of(cls, config: PipelineConfig, fingerprint: str) -> WatermarkSpec | None:
        """The watermark of a job with fingerprint ``fingerprint``, or None when it asks for none."""
        if not config.provenance.watermark or not config.model.mode.makes_image:
            return None
        return cls(watermark_payload(fingerprint), config.provenance.watermark_method)


def watermark_batch(batch: pd.DataFrame, spec: WatermarkSpec) -> pd.DataFrame:
    """``batch`` with the generated image of every ok row watermarked (error rows for those that cannot be)."""
    out = batch.copy()
    images, status, reasons = out[r.OUT_PIXELS].tolist(), out[r.STATUS].tolist(), out[r.REASON].tolist()
    for i, pixels in enumerate(images):
        if status[i] != r.Status.OK.value or r.missing(pixels):
            continue
        try:
            images[i] = to_bytes(embed_watermark(from_bytes(pixels), spec.payload, spec.method))  # type: ignore[arg-type]
        except WatermarkError as exc:
            status[i], reasons[i] = r.Status.ERROR.value, f"provenance: watermark: {exc}"
    out[r.OUT_PIXELS], out[r.STATUS], out[r.REASON] = images, status, reasons
    return out
