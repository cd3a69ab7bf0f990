"""Stage 1, CPU tasks: per-record seeds, prompt checks, image decoding (EXIF, RGB, resize + center-crop).

GPUs never decode: the generate stage receives ready pixels. Bad records become error rows here.
"""

from __future__ import annotations

import pandas as pd

from pipelines import records as r
from pipelines.stages.pixels import to_bytes
from unidiffuser import InputError, derive_seed, prepare_image
from unidiffuser.inputs import check_prompt


def preprocess_batch(
    batch: pd.DataFrame,
    *,
    job_seed: int,
    input_kind: str,
    resolution: int,
    max_image_pixels: int,
    keep_source_images: bool = False,
) -> pd.DataFrame:
    """Add seed, pixels, status, reason and flags to one unit's rows (and, if asked, keep each good input
    image's file bytes for the shards)."""
    seeds, pixels, sources, status, reasons, flags = [], [], [], [], [], []
    for row in batch.itertuples(index=False):
        key = getattr(row, r.KEY)
        seeds.append(derive_seed(job_seed, key))
        read_error = getattr(row, r.READ_ERROR)
        image, reason, row_flags = None, None if r.missing(read_error) else read_error, []
        if reason is None:
            try:
                if input_kind == "prompts":
                    check_prompt(getattr(row, r.PROMPT))
                elif input_kind == "images":
                    prepared = prepare_image(
                        getattr(row, r.IMAGE_BYTES), resolution, max_pixels=max_image_pixels
                    )
                    image, row_flags = to_bytes(prepared.pixels), prepared.flags
            except InputError as exc:
                reason = str(exc)
        pixels.append(image)
        sources.append(getattr(row, r.IMAGE_BYTES) if keep_source_images and image is not None else None)
        status.append(r.Status.OK.value if reason is None else r.Status.ERROR.value)
        reasons.append(None if reason is None else f"input: {reason}")  # reader and input problems alike
        flags.append(row_flags)
    out = batch.drop(columns=[r.IMAGE_BYTES, r.READ_ERROR])
    out[r.SEED] = seeds
    out[r.PIXELS] = pixels
    out[r.SOURCE_IMAGE] = sources
    out[r.STATUS] = status
    out[r.REASON] = reasons
    out[r.FLAGS] = flags
    return out
