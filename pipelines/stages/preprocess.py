"""Stage 1, CPU tasks: prompt checks, image decoding (EXIF, RGB, resize + center-crop), samples, seeds.

GPUs never decode: the generate stage receives ready pixels. Bad records become error rows here. With
``samples_per_input`` > 1 each input becomes that many records (decoded once), each with its own key and seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pandas as pd

from pipelines import records as r
from pipelines.blocklist import BLOCKLIST_RULE, Blocklist, blocked_reason
from pipelines.config import InputKind
from pipelines.dedup.inputs import DUPLICATE_RULE, duplicate_reason
from pipelines.pixels import to_bytes
from pipelines.stages.filter import reject_records
from unidiffuser import InputError, derive_seed, prepare_image
from unidiffuser.inputs import check_prompt


def preprocess_batch(
    batch: pd.DataFrame,
    *,
    job_seed: int,
    input_kind: InputKind,
    resolution: int,
    max_image_pixels: int,
    keep_source_images: bool = False,
    samples_per_input: int = 1,
    blocklist: Blocklist | None = None,
    duplicates: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Add pixels, status, reason and flags to one unit's rows (and, if asked, keep each good input image's
    file bytes for the shards), then draw ``samples_per_input`` records of each with their keys and seeds.

    Reasons name where a record failed: ``read: ...`` (the reader could not produce it), ``input: ...`` (it
    was read but is not a usable prompt or image). A prompt matching the ``blocklist``, and an input that ``duplicates`` names
    (input key -> its first copy's key), are rejected."""
    started = time.time()
    pixels, sources, status, reasons, flags = [], [], [], [], []
    for row in batch.itertuples(index=False):
        read_error = getattr(row, r.READ_ERROR)
        image, reason, row_flags = None, None if r.missing(read_error) else f"read: {read_error}", []
        if reason is None:
            try:
                if input_kind == InputKind.PROMPTS:
                    check_prompt(getattr(row, r.PROMPT))
                elif input_kind == InputKind.IMAGES:
                    prepared = prepare_image(
                        getattr(row, r.IMAGE_BYTES), resolution, max_pixels=max_image_pixels
                    )
                    image, row_flags = to_bytes(prepared.pixels), prepared.flags
            except InputError as exc:
                reason = f"input: {exc}"
        pixels.append(image)
        sources.append(getattr(row, r.IMAGE_BYTES) if keep_source_images and image is not None else None)
        status.append(r.Status.OK.value if reason is None else r.Status.ERROR.value)
        reasons.append(reason)
        flags.append(row_flags)
    out = batch.drop(columns=[r.IMAGE_BYTES, r.READ_ERROR])
    out[r.PIXELS] = pixels
    out[r.SOURCE_IMAGE] = sources
    out[r.STATUS] = status
    out[r.REASON] = reasons
    out[r.FLAGS] = flags
    out[r.STARTED_AT] = started
    if blocklist is not None:
        out = _block(out, blocklist)
    if duplicates:
        out = _reject_duplicates(out, duplicates)
    out = draw_samples(out, samples_per_input)
    out[r.SEED] = [derive_seed(job_seed, key) for key in out[r.KEY]]
    return out


def _reject_duplicates(batch: pd.DataFrame, duplicates: Mapping[str, str]) -> pd.DataFrame:
    """Reject the ok inputs that repeat an earlier one (see ``pipelines.dedup.inputs``)."""
    out = batch
    for i, key in enumerate(batch[r.KEY]):
        if key in duplicates:
            out = reject_records(out, [i], duplicate_reason(duplicates[key]), DUPLICATE_RULE)
    return out


def _block(batch: pd.DataFrame, blocklist: Blocklist) -> pd.DataFrame:
    """Reject the ok records whose prompt matches an entry of ``blocklist``."""
    out = batch
    for i, (status, prompt) in enumerate(zip(batch[r.STATUS], batch[r.PROMPT], strict=True)):
        entry = blocklist.match(prompt) if status == r.Status.OK.value and isinstance(prompt, str) else None
        if entry is not None:
            out = reject_records(out, [i], blocked_reason(entry), BLOCKLIST_RULE)
    return out


def draw_samples(batch: pd.DataFrame, samples_per_input: int) -> pd.DataFrame:
    """``samples_per_input`` rows per input row, in input order, with INPUT_KEY, SAMPLE and the sample's KEY
    (``{input key}_{sample}``; the input key itself when there is one sample per input). Keys stay unique:
    a sample key ends in ``_`` and digits, and no input key gets an unsuffixed sample when there are several."""
    batch = batch.reset_index(drop=True)
    input_keys = batch[r.KEY].tolist()
    out = batch.loc[batch.index.repeat(samples_per_input)].reset_index(drop=True)
    samples = [i for _ in input_keys for i in range(samples_per_input)]
    out[r.INPUT_KEY] = [key for key in input_keys for _ in range(samples_per_input)]
    out[r.SAMPLE] = samples
    if samples_per_input > 1:
        out[r.KEY] = [f"{key}_{i}" for key, i in zip(out[r.INPUT_KEY], samples, strict=True)]
    return out
