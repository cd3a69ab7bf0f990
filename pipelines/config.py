"""The pipeline's configuration: one typed, validated model that is also the job spec (YAML in ``jobs/``).

Secrets never live here: object-store credentials come from the environment (AWS_* variables, profiles,
instance roles) as s3fs/botocore read them; ``storage`` only names the endpoint, region or profile.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unidiffuser.config import Mode

PIPELINE_MODES = (Mode.T2I, Mode.I2T, Mode.JOINT, Mode.IMAGE, Mode.TEXT, Mode.I2T2I, Mode.T2I2T)
INPUT_KIND_FOR_MODE = {
    Mode.T2I: "prompts",
    Mode.T2I2T: "prompts",
    Mode.I2T: "images",
    Mode.I2T2I: "images",
    Mode.JOINT: "count",
    Mode.IMAGE: "count",
    Mode.TEXT: "count",
}
OutputFormat = Literal["parquet", "webdataset", "embeddings"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSpec(_Strict):
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


class InputSpec(_Strict):
    """What to read: prompt files, image collections, or a count of records made from nothing."""

    kind: Literal["prompts", "images", "count"] = Field(description="what the records are made from")
    uri: str | None = Field(None, description="file, folder or glob; local, file://, s3://, gs://, ...")
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
        if self.kind == "count" and self.count is None:
            raise ValueError("input.count is required when input.kind is 'count'")
        if self.kind != "count" and not self.uri:
            raise ValueError(f"input.uri is required when input.kind is '{self.kind}'")
        if self.keep_fields and self.kind == "count":
            raise ValueError("input.keep_fields needs input records: kind 'count' has no fields to keep")
        return self


class ModelSpec(_Strict):
    """Which checkpoint and how to sample (see unidiffuser.EngineConfig for the meaning of each)."""

    checkpoint: str = Field(description="diffusers-layout checkpoint folder or fsspec URI")
    model_id: str | None = Field(None, description="name written to every output row (default: checkpoint)")
    mode: Mode = Field(Mode.T2I, description="one of t2i, i2t, joint, image, text, i2t2i, t2i2t")
    steps: int = Field(50, ge=1, le=1000, description="DPM-Solver++ steps")
    guidance_scale: float = Field(7.0, ge=0.0, description="classifier-free guidance; <= 1 disables it")
    t2i_cfg_mode: Literal["true_uncond", "empty_token"] = Field(
        "true_uncond", description="t2i's unconditional branch: text at max noise, or the empty prompt"
    )
    data_type: Literal[0, 1] = Field(1, description="v1 checkpoints: 1 = the v1 data, 0 = LAION-like")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="compute dtype")
    resolution: int | None = Field(None, gt=0, description="must match the checkpoint if given")
    compile: bool = Field(False, description="torch.compile the U-ViT")
    samples_per_input: int = Field(
        1,
        ge=1,
        le=1000,
        description="records drawn per prompt or image, each with its own seed (key "
        "`{key}_{i}`); with clip.keep_best, best-of-n generation",
    )
    caption_beams: int = Field(5, ge=1, description="beam width of caption decoding")
    caption_max_tokens: int = Field(67, ge=1, description="longest caption, in tokens")
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger input images are errors (bomb guard)")

    @field_validator("mode")
    @classmethod
    def _pipeline_mode(cls, mode: Mode) -> Mode:
        if mode not in PIPELINE_MODES:
            raise ValueError(
                f"mode {mode.value!r} runs in the engine only; pipelines run {[m.value for m in PIPELINE_MODES]}"
            )
        return mode

    def engine_config(self, *, device: str, batch_size: int) -> dict[str, Any]:
        """Keyword arguments for ``unidiffuser.EngineConfig``."""
        keys = ("mode", "steps", "guidance_scale", "t2i_cfg_mode", "data_type", "dtype", "resolution", "compile",
                "caption_beams", "caption_max_tokens", "max_image_pixels")  # fmt: skip
        return {**{k: getattr(self, k) for k in keys}, "device": device, "batch_size": batch_size}


class ClipSpec(_Strict):
    """CLIP scoring and filtering of the outputs."""

    enabled: bool = Field(True, description="score (and filter) the outputs")
    model: str | None = Field(None, description="CLIP folder or URI (openai/clip-vit-large-patch14 layout)")
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


class OutputSpec(_Strict):
    """Where and how shards are written."""

    uri: str = Field(description="output folder; local, file://, s3://, ...")
    formats: list[OutputFormat] = Field(
        default_factory=lambda: ["parquet", "webdataset"], description="shard formats to write"
    )
    shard_size: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="inputs per unit = per shard (times model.samples_per_input records)",
    )
    image_format: Literal["jpeg", "png", "webp"] = Field("jpeg", description="encoding of written images")
    image_quality: int = Field(95, ge=1, le=100, description="JPEG / WebP quality")
    caption_image: Literal["source", "model_input", "none"] = Field(
        "source",
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


class ResourcesSpec(_Strict):
    """How the work is spread over the cluster."""

    actors: int = Field(1, ge=1, description="UniDiffuser actors (one engine each)")
    gpus_per_actor: float = Field(0.0, ge=0.0, description="0 runs on CPU")
    cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs reserved per UniDiffuser actor")
    batch_size: int = Field(8, ge=1, description="records per forward inside an actor")
    clip_actors: int = Field(1, ge=1, description="CLIP scorer actors")
    clip_gpus_per_actor: float = Field(0.0, ge=0.0, description="may be fractional to share a GPU")
    clip_cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs reserved per CLIP actor")
    preprocess_cpus: float = Field(1.0, gt=0.0, description="CPUs per preprocess / write task")

    def cpus_needed(self, *, clip: bool) -> float:
        """CPUs the pipeline holds at once: every actor plus one preprocess/write task."""
        actors = self.actors * self.cpus_per_actor
        return actors + (self.clip_actors * self.clip_cpus_per_actor if clip else 0.0) + self.preprocess_cpus

    def gpus_needed(self, *, clip: bool) -> float:
        return self.actors * self.gpus_per_actor + (
            self.clip_actors * self.clip_gpus_per_actor if clip else 0.0
        )


class PipelineConfig(_Strict):
    """A whole job: input -> model -> CLIP -> output."""

    name: str = Field("unidiffuser-job", description="job name, used in logs and the summary")
    input: InputSpec
    model: ModelSpec
    clip: ClipSpec = Field(default_factory=lambda: ClipSpec(enabled=False))
    output: OutputSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: int = Field(0, description="job seed; a record's seed is derived from it and the record's key")
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _mode_matches_input(self) -> PipelineConfig:
        wanted = INPUT_KIND_FOR_MODE[self.model.mode]
        if self.input.kind != wanted:
            raise ValueError(
                f"model.mode {self.model.mode.value!r} needs input.kind {wanted!r}, got {self.input.kind!r}"
            )
        return self

    @model_validator(mode="after")
    def _samples(self) -> PipelineConfig:
        samples, keep = self.model.samples_per_input, self.clip.keep_best
        if samples > 1 and self.input.kind == "count":
            raise ValueError("model.samples_per_input applies to prompts and images; for input.kind 'count' "
                             "raise input.count instead")  # fmt: skip
        if keep is not None and not self.clip.enabled:
            raise ValueError("clip.keep_best ranks samples by CLIP score: it needs clip.enabled")
        if keep is not None and keep >= samples:
            raise ValueError(f"clip.keep_best ({keep}) must be below model.samples_per_input ({samples}), "
                             "or it keeps every sample")  # fmt: skip
        return self

    @property
    def model_id(self) -> str:
        return self.model.model_id or self.model.checkpoint

    def output_fingerprint(self) -> str:
        """A hash of everything in the spec that decides what the shards hold (input, model, CLIP, output
        format, seed); ``pipelines.resume.job_fingerprint`` adds the checkpoints' identities and stores it in
        every unit marker, so a resume only skips units this very job committed. Name, resources and storage
        are left out: a job may resume on another cluster or under another name."""
        fields = self.model_dump(mode="json", include={"input", "model", "clip", "output", "seed"})
        fields["output"].pop("uri", None)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def device(self) -> str:
        return "cuda" if self.resources.gpus_per_actor > 0 else "cpu"
