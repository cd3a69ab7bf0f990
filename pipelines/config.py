"""The pipeline's configuration: one typed, validated model that is also the job spec (YAML in ``jobs/``).

Secrets never live here: object-store credentials come from the environment (AWS_* variables, profiles,
instance roles) as s3fs/botocore read them; ``storage`` only names the endpoint, region or profile.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from pipelines import records as r
from pipelines.dedup.spec import DedupSpec
from pipelines.heads.spec import HeadSpec
from pipelines.provenance.spec import ProvenanceSpec
from pipelines.spec_fields import Location, Strict
from pipelines.writers.formats import OutputFormatName
from pipelines.writers.shard_image import CaptionImage
from unidiffuser.config import Mode, ModeInput, SamplingConfig


class InputKind(StrEnum):
    """What a job's records are made from."""

    PROMPTS = "prompts"
    IMAGES = "images"
    COUNT = "count"


INPUT_KIND_OF: dict[ModeInput, InputKind] = {
    ModeInput.TEXT: InputKind.PROMPTS,
    ModeInput.IMAGE: InputKind.IMAGES,
    ModeInput.NOTHING: InputKind.COUNT,
}
"""The input kind a mode's records come from (``Mode.input`` in the engine's words)."""

PIPELINE_MODES = tuple(mode for mode in Mode if mode.input in INPUT_KIND_OF)


RESERVED_COLUMNS = frozenset(
    {r.KEY, r.INPUT_KEY, r.SAMPLE, r.SOURCE, r.MODE, r.PROMPT, r.SOURCE_CAPTION, r.GENERATED_CAPTION, r.TEXT,
     r.PROMPT_USED, r.FLAGS, r.IMAGE, r.IMAGE_FORMAT, r.WIDTH, r.HEIGHT, r.CLIP_SCORE, r.SEED, r.MODEL_ID,
     r.PARAMS, r.METADATA, r.IMAGE_EMBEDDING, r.TEXT_EMBEDDING, r.REASON, r.STATUS, "status"}
)  # fmt: skip
"""Output column names a score head may not take."""


def input_kind(mode: Mode) -> InputKind:
    """The input kind ``mode`` reads (pipeline modes only)."""
    return INPUT_KIND_OF[mode.input]


class StorageSpec(Strict):
    """How to reach object storage (credentials come from the environment only)."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000")
    region: str | None = Field(None, description="S3 region")
    profile: str | None = Field(None, description="AWS profile name from the environment's config files")
    anon: bool = Field(False, description="anonymous access (public buckets)")

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs keyword arguments (no secrets)."""
        options: dict[str, Any] = {}
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        if client:
            options["client_kwargs"] = client
        if self.profile:
            options["profile"] = self.profile
        if self.anon:
            options["anon"] = True
        return options


class InputSpec(Strict):
    """What to read: prompt files, image collections, or a count of records made from nothing."""

    kind: InputKind = Field(strict=False, description="what the records are made from")
    uri: Location | None = Field(None, description="file, folder or glob; local, file://, s3://, gs://, ...")
    field: str | None = Field(None, description="column / JSON field holding the prompt (or image bytes)")
    count: int | None = Field(None, ge=1, description="number of records for kind=count")
    keep_fields: list[str] = Field(
        default_factory=list,
        description="fields of each input record carried to its outputs as the `metadata` JSON column (a "
        "missing one is null): prompts: JSON/JSONL fields or CSV/TSV/parquet columns; images: fields of the "
        "tar sample's `.json` or the image file's `.json` beside it, or parquet columns",
    )

    @model_validator(mode="after")
    def _needs(self) -> InputSpec:
        if self.kind == InputKind.COUNT and self.count is None:
            raise ValueError("input.count is required when input.kind is 'count'")
        if self.kind != InputKind.COUNT and not self.uri:
            raise ValueError(f"input.uri is required when input.kind is '{self.kind}'")
        if self.keep_fields and self.kind == InputKind.COUNT:
            raise ValueError("input.keep_fields needs input records: kind 'count' has no fields to keep")
        return self


class ModelSpec(Strict, SamplingConfig):
    """Which checkpoint and how to sample (the sampling keys are unidiffuser.SamplingConfig's)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    checkpoint: Location = Field(description="diffusers-layout checkpoint folder or fsspec URI")
    model_id: str | None = Field(None, description="name written to every output row (default: checkpoint)")
    mode: Mode = Field(Mode.T2I, strict=False, description=f"one of {', '.join(PIPELINE_MODES)}")
    samples_per_input: int = Field(
        1,
        ge=1,
        le=1000,
        description="records drawn per prompt or image, each with its own seed (key "
        "`{key}_{i}`); with clip.keep_best, best-of-n generation",
    )

    @field_validator("mode")
    @classmethod
    def _pipeline_mode(cls, mode: Mode) -> Mode:
        if mode not in PIPELINE_MODES:
            raise ValueError(
                f"mode {mode.value!r} runs in the engine only; pipelines run {[m.value for m in PIPELINE_MODES]}"
            )
        return mode


class ClipSpec(Strict):
    """CLIP scoring and filtering of the outputs."""

    enabled: bool = Field(True, description="score (and filter) the outputs")
    model: Location | None = Field(
        None, description="CLIP folder or URI (openai/clip-vit-large-patch14 layout)"
    )
    min_score: float | None = Field(None, description="reject records scoring below (cosine similarity)")
    max_score: float | None = Field(
        None, description="reject records scoring above (e.g. text rendered in image)"
    )
    batch_size: int = Field(32, ge=1, description="images or texts per CLIP forward")
    keep_best: int | None = Field(
        None,
        ge=1,
        description="keep only the k best-scoring samples of each input (the others are "
        "rejected with the reason); needs model.samples_per_input above k",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ClipSpec:
        if self.enabled and not self.model:
            raise ValueError("clip.model is required when clip.enabled is true")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError("clip.min_score must not exceed clip.max_score")
        return self


class CurationSpec(Strict):
    """Judging the records beyond CLIP: score heads (aesthetic, safety, watermark, ...) and a prompt blocklist."""

    heads: list[HeadSpec] = Field(
        default_factory=list,
        description="score heads, each a folder or URI: its score is a column of every output; records outside "
        "its min / max are rejected (applies_to: output, or input for i2t / i2t2i: before generation)",
    )
    blocklist: Location | None = Field(
        None,
        description="t2i / t2i2t: a file of words (matched whole, any case) or /regular expressions/, one per "
        "line; a prompt matching one is rejected before generation",
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="exact and near-duplicate removal")

    @model_validator(mode="after")
    def _unique(self) -> CurationSpec:
        for what in ("name", "column"):
            values = [getattr(h, what) for h in self.heads]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"curation.heads: the {what} {', '.join(map(repr, repeated))} is used twice")
        taken = sorted({h.column for h in self.heads if h.column} & RESERVED_COLUMNS)
        if taken:
            raise ValueError(
                f"curation.heads: column {', '.join(map(repr, taken))} is a column of ours already"
            )
        return self

    def heads_for(self, applies_to: str) -> list[HeadSpec]:
        """The heads that judge the output images, or the input images."""
        return [h for h in self.heads if h.applies_to == applies_to]


class OutputSpec(Strict):
    """Where and how shards are written."""

    uri: Location = Field(description="output folder; local, file://, s3://, ...")
    formats: list[OutputFormatName] = Field(
        default_factory=lambda: list[OutputFormatName](["parquet", "webdataset"]),
        description="shard formats to write",
    )
    license: str | None = Field(
        None,
        description="the dataset's license, written into its card (a Hugging Face license id: mit, cc-by-4.0, ...)",
    )
    shard_size: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="inputs per unit = per shard (times model.samples_per_input records)",
    )
    image_format: Literal["jpeg", "png", "webp"] = Field("jpeg", description="encoding of written images")
    image_quality: int = Field(95, ge=1, le=100, description="JPEG / WebP quality")
    caption_image: CaptionImage = Field(
        CaptionImage.SOURCE,
        strict=False,
        description="i2t: the image written with each caption: the input file as read (`source`; JPEG, PNG and "
        "WebP unchanged, other formats re-encoded at their own size), the resized, center-cropped model input "
        "(`model_input`), or no image (`none`)",
    )

    @field_validator("formats")
    @classmethod
    def _formats(cls, formats: list[str]) -> list[str]:
        if not formats:
            raise ValueError("at least one output format")
        return sorted(set(formats), key=formats.index)


class ResourcesSpec(Strict):
    """How the work is spread over the cluster. Every stage but read + preprocess runs in actors whose
    resources are reserved when the job starts, so the writers always have the CPUs to commit each unit
    as soon as it is judged."""

    actors: int = Field(1, ge=1, description="UniDiffuser actors (one engine each)")
    gpus_per_actor: float = Field(0.0, ge=0.0, description="0 runs on CPU")
    cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs reserved per UniDiffuser actor")
    batch_size: int = Field(8, ge=1, description="records per forward inside an actor")
    clip_actors: int = Field(1, ge=1, description="CLIP scorer actors")
    clip_gpus_per_actor: float = Field(0.0, ge=0.0, description="may be fractional to share a GPU")
    clip_cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs reserved per CLIP actor")
    writers: int = Field(1, ge=1, description="writer actors (encode, write and commit units)")
    writer_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per writer actor")
    preprocess_cpus: float = Field(1.0, gt=0.0, description="CPUs per read + preprocess task")

    def cpus_needed(self, *, judges: int) -> float:
        """CPUs the pipeline holds at once: every actor (``judges`` pools of CLIP actors: the output judges,
        and the input judges when there are input heads) plus one read + preprocess task."""
        actors = self.actors * self.cpus_per_actor + self.writers * self.writer_cpus
        return actors + judges * self.clip_actors * self.clip_cpus_per_actor + self.preprocess_cpus

    def gpus_needed(self, *, judges: int) -> float:
        """GPUs the pipeline's actors hold."""
        return self.actors * self.gpus_per_actor + judges * self.clip_actors * self.clip_gpus_per_actor

    @property
    def engine_threads(self) -> int:
        """torch's intra-op threads in each engine actor on CPU: its whole CPUs, at least 1. Set explicitly (not
        left to the environment): on CPU a record's output depends on it, and the summary records it."""
        return max(1, math.floor(self.cpus_per_actor))


class PipelineConfig(Strict):
    """A whole job: input -> model -> CLIP -> output."""

    name: str = Field("unidiffuser-job", description="job name, used in logs and the summary")
    input: InputSpec
    model: ModelSpec
    clip: ClipSpec = Field(default_factory=lambda: ClipSpec(enabled=False))
    curation: CurationSpec = Field(default_factory=CurationSpec)
    provenance: ProvenanceSpec = Field(default_factory=ProvenanceSpec)
    output: OutputSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: int = Field(0, description="job seed; a record's seed is derived from it and the record's key")
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _mode_matches_input(self) -> PipelineConfig:
        wanted = input_kind(self.model.mode)
        if self.input.kind != wanted:
            raise ValueError(
                f"model.mode '{self.model.mode}' needs input.kind '{wanted}', got '{self.input.kind}'"
            )
        return self

    @model_validator(mode="after")
    def _samples(self) -> PipelineConfig:
        samples, keep = self.model.samples_per_input, self.clip.keep_best
        if samples > 1 and self.input.kind == InputKind.COUNT:
            raise ValueError("model.samples_per_input applies to prompts and images; for input.kind 'count' "
                             "raise input.count instead")  # fmt: skip
        if keep is not None and not self.clip.enabled:
            raise ValueError("clip.keep_best ranks samples by CLIP score: it needs clip.enabled")
        if keep is not None and keep >= samples:
            raise ValueError(f"clip.keep_best ({keep}) must be below model.samples_per_input ({samples}), "
                             "or it keeps every sample")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _curation(self) -> PipelineConfig:
        heads, mode = self.curation.heads, self.model.mode
        if any(h.input == "embedding" for h in heads) and not self.clip.enabled:
            names = [h.name for h in heads if h.input == "embedding"]
            raise ValueError(f"curation.heads {names} score CLIP image embeddings: they need clip.enabled")
        if self.curation.heads_for("input") and mode.input != ModeInput.IMAGE:
            raise ValueError(
                f"curation.heads with applies_to 'input' judge input images: mode '{mode}' has none"
            )
        if any(h.applies_to == "output" for h in heads) and not mode.makes_image and mode != Mode.I2T:
            raise ValueError(f"curation.heads judge images: mode '{mode}' writes none")
        if self.curation.blocklist is not None and mode.input != ModeInput.TEXT:
            raise ValueError(f"curation.blocklist judges prompts: mode '{mode}' reads none")
        marks = self.provenance
        if (marks.watermark or marks.c2pa is not None) and not mode.makes_image:
            raise ValueError(
                f"provenance.watermark and provenance.c2pa mark generated images: mode '{mode}' makes none"
            )
        dedup = self.curation.dedup
        if dedup.exact_inputs and mode.input == ModeInput.NOTHING:
            raise ValueError(f"curation.dedup.exact_inputs compares inputs: mode '{mode}' reads none")
        if dedup.phase and not self.clip.enabled:
            raise ValueError("curation.dedup compares CLIP embeddings: it needs clip.enabled")
        if dedup.phase and "parquet" not in self.output.formats:
            raise ValueError(
                "curation.dedup rewrites units from their parquet shards: add 'parquet' to output.formats"
            )
        columns = {r.CLIP_SCORE, *(h.column for h in heads)}
        if dedup.keep not in columns:
            raise ValueError(
                f"curation.dedup.keep {dedup.keep!r} is not a score column ({', '.join(sorted(c for c in columns if c))})"
            )
        return self

    @property
    def judge_pools(self) -> int:
        """How many pools of CLIP / head actors the job runs: the output judges (with CLIP scoring) and the
        input judges (with heads that judge the input images)."""
        return int(self.clip.enabled) + int(bool(self.curation.heads_for("input")))

    @property
    def model_id(self) -> str:
        return self.model.model_id or self.model.checkpoint

    def output_fingerprint(self) -> str:
        """A hash of everything in the spec that decides what the shards hold (input, model, CLIP, output
        format, seed); ``pipelines.resume.job_fingerprint`` adds the checkpoints' identities and stores it in
        every unit marker, so a resume only skips units this very job committed. Name, resources and storage
        are left out: a job may resume on another cluster or under another name."""
        fields = self.model_dump(
            mode="json", include={"input", "model", "clip", "curation", "provenance", "output", "seed"}
        )
        fields["output"].pop("uri", None)
        fields["output"].pop("license", None)
        # the dedup phase works on committed units (its own decisions track its settings); only the exact
        # input dedup decides what the units hold
        fields["curation"]["dedup"] = {"exact_inputs": self.curation.dedup.exact_inputs}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def device(self) -> str:
        return "cuda" if self.resources.gpus_per_actor > 0 else "cpu"
