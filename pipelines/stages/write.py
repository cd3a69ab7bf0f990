"""Stage 5, CPU tasks: write one unit's shards (ok / rejected / errors) and commit it; emit its counts."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.stages.pixels import from_bytes
from pipelines.writers.unit_writer import OutputSpec, write_unit
from unidiffuser import Mode

_IMAGE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def output_spec(
    config: PipelineConfig, fingerprint: str | None = None, unit_inputs: Mapping[int, str] | None = None
) -> OutputSpec:
    """The writers' view of the job's output section. Recorded in each unit marker: ``fingerprint`` (the
    job's, see ``pipelines.resume.job_fingerprint``) and the unit's ``Unit.input_hash`` from ``unit_inputs``."""
    out = config.output
    return OutputSpec(
        uri=out.uri,
        formats=tuple(out.formats),
        image_format=_IMAGE_FORMATS[out.image_format],
        quality=out.image_quality,
        storage_options=config.storage.storage_options(),
        fingerprint=fingerprint,
        unit_inputs=dict(unit_inputs or {}),
    )


def keeps_source_images(config: PipelineConfig) -> bool:
    """Whether preprocess must keep each input file's bytes for the shards (i2t written with its source)."""
    return config.model.mode == Mode.I2T and config.output.caption_image == "source"


def write_batch(batch: pd.DataFrame, *, output: OutputSpec, caption_image: str) -> pd.DataFrame:
    """Write and commit the unit in ``batch``; returns one row with the unit's counts (for progress).

    ``caption_image`` (``output.caption_image``) picks the image of i2t rows: their kept input file
    (``source``, kept by preprocess), the model input the generate stage paired them with, or none."""
    rows = batch.copy()
    if caption_image != "model_input":
        rows.loc[rows[r.MODE] == Mode.I2T.value, r.OUT_PIXELS] = None
    rows[r.OUT_PIXELS] = [None if r.missing(p) else from_bytes(p) for p in rows[r.OUT_PIXELS]]
    marker = write_unit(rows.drop(columns=[r.PIXELS]), output=output)
    counts = {k: marker[k] for k in ("unit", "records", "written", "rejected", "errored")}
    return pd.DataFrame([{**counts, "reasons": json.dumps(marker["reasons"])}])
