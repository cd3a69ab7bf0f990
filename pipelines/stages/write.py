"""Stage 5, the writer actors: filter one unit, write its shards (ok / rejected / errors) and commit it; emit
its counts.

Writers are actors, so the CPUs they need are reserved when the job starts: a unit is committed as soon as it
is judged, however busy the cluster's other stages keep its CPUs (resume is only worth what is committed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from pipelines.config import PipelineConfig
from pipelines.provenance.c2pa_manifest import C2paSigner
from pipelines.provenance.job_marks import JobMarks
from pipelines.stages.filter import FilterSpec, filter_batch
from pipelines.stages.watermark import WatermarkSpec, watermark_batch
from pipelines.versions import package_version
from pipelines.writers.formats import OutputSpec
from pipelines.writers.shard_image import CaptionImage
from pipelines.writers.unit_writer import write_unit

_IMAGE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def output_spec(
    config: PipelineConfig,
    fingerprint: str | None = None,
    unit_inputs: Mapping[int, str] | None = None,
    marks: JobMarks | None = None,
) -> OutputSpec:
    """The writers' view of the job's output section. Recorded in each unit marker: ``fingerprint`` (the
    job's, see ``pipelines.resume.job_fingerprint``) and the unit's ``Unit.input_hash`` from ``unit_inputs``;
    ``marks`` (``job_marks``) go into every generated image."""
    out = config.output
    return OutputSpec(
        uri=out.uri,
        formats=tuple(out.formats),
        image_format=_IMAGE_FORMATS[out.image_format],
        quality=out.image_quality,
        storage_options=config.storage.storage_options(),
        fingerprint=fingerprint,
        unit_inputs=dict(unit_inputs or {}),
        score_columns=tuple(h.column or h.name for h in config.curation.heads),
        marks=marks,
    )


def job_marks(config: PipelineConfig, checkpoint_version: str, signer: C2paSigner | None = None) -> JobMarks:
    """The job-wide part of every generated image's generation record (``pipelines.provenance.job_marks``)."""
    model = config.model
    return JobMarks(
        job=config.name,
        model_id=model.model_id or model.checkpoint,
        model_version=checkpoint_version,
        steps=model.steps,
        guidance_scale=model.guidance_scale,
        cfg_mode=model.t2i_cfg_mode,
        data_type=model.data_type,
        dtype=model.dtype,
        software_version=package_version(),
        signer=signer,
    )


def write_batch(batch: pd.DataFrame, *, output: OutputSpec, caption_image: CaptionImage) -> pd.DataFrame:
    """Write and commit the unit in ``batch``; returns one row with the unit's counts (for progress).

    ``caption_image`` (``output.caption_image``) picks the image of i2t rows (see ``shard_image``)."""
    done = write_unit(batch, output=output, caption_image=caption_image)
    counts = {"unit": done.unit, "records": done.records, "written": done.written, "rejected": done.rejected,
              "errored": done.errored}  # fmt: skip
    return pd.DataFrame([{**counts, "reasons": json.dumps(done.reasons)}])


class WriteStage:
    """Callable class for ``Dataset.map_batches``: one writer actor, fed one unit (block) per call. It applies
    the job's filter (``filter.FilterSpec``: each record's final status is decided here, once) and then writes
    and commits the unit."""

    def __init__(
        self,
        output: OutputSpec,
        caption_image: CaptionImage,
        judge: FilterSpec,
        watermark: WatermarkSpec | None = None,
    ):
        """``watermark``: embedded here when no CLIP stage ran before (which embeds it otherwise)."""
        self.output = output
        self.caption_image = caption_image
        self.judge = judge
        self.watermark = watermark

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.watermark is not None:
            batch = watermark_batch(batch, self.watermark)
        return write_batch(
            filter_batch(batch, self.judge), output=self.output, caption_image=self.caption_image
        )
