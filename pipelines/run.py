"""Build and run one job as a streaming Ray Data pipeline, then account for every input.

    read + preprocess (CPU tasks, one per unit) [-> input judges (actors)] -> generate (engine actors)
    -> CLIP score + score heads (actors) -> filter + write + commit (writer actors)
    [-> dedup phase (near-duplicates, reference sets)] -> _summary.json

Units this job already committed under the output are skipped, so re-running a job resumes it; units of
another configuration are redone and units outside the plan removed. Every stage after preprocess runs in
actors whose resources are reserved when the job starts, so a unit is committed as soon as it is judged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from pipelines.blocklist import Blocklist
from pipelines.config import InputKind, PipelineConfig
from pipelines.dedup.inputs import InputDuplicates, find_input_duplicates
from pipelines.dedup.phase import run_dedup_phase
from pipelines.provenance.job_marks import JobMarks, load_job_signer
from pipelines.readers import PlannedInput, plan_input
from pipelines.resume import RunPlan, plan_run, retire_units
from pipelines.stages.filter import FilterSpec
from pipelines.stages.generate import GenerateStage
from pipelines.stages.preprocess import preprocess_batch
from pipelines.stages.score import ClipScoreStage, InputJudgeStage
from pipelines.stages.watermark import WatermarkSpec
from pipelines.stages.write import WriteStage, job_marks, output_spec
from pipelines.versions import versions
from pipelines.writers.dataset_card import write_dataset_card
from pipelines.writers.summary import RunWork, write_summary
from pipelines.writers.wids_index import write_wids_index
from unidiffuser.checkpoint import read_checkpoint_resolution

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did: the summary written to ``_summary.json`` and how much work this run itself did."""

    summary: dict[str, Any]
    units_total: int
    units_skipped: int
    units_run: int
    stats: str = ""  # Ray Data's per-operator execution statistics ("" when nothing ran)

    @property
    def did_model_work(self) -> bool:
        return self.units_run > 0


def plan_job_input(config: PipelineConfig) -> PlannedInput:
    """Plan the job's input into units of ``output.shard_size`` inputs."""
    return plan_input(
        config.input, unit_size=config.output.shard_size, storage_options=config.storage.storage_options()
    )


def build_dataset(
    config: PipelineConfig, plan: RunPlan, *, generate_cls: Callable[..., Any] = GenerateStage
) -> ray.data.Dataset:
    """The pipeline over the units ``plan`` runs, as a lazy Ray Dataset of one count row per unit. Its actors
    load the model versions the plan was made with, and each marker records the plan's fingerprint.

    Ray Data restarts a crashed actor and retries its unit (its default for actor pools: max_restarts=-1,
    max_task_retries=-1), and a rewritten unit overwrites the same files.
    """
    res = config.resources
    one_block: dict[str, Any] = {
        "batch_size": None,
        "batch_format": "pandas",
    }  # a unit is one block, one call
    one_to_one = one_block | {"udf_modifying_row_count": False}
    resolution = read_checkpoint_resolution(
        config.model.checkpoint, storage_options=config.storage.storage_options()
    )
    # A unit is read and preprocessed in one task (same resources: Ray Data fuses the two). The memory
    # reservation also keeps that task apart from the engine actors, which reserve none: Ray Data fuses
    # adjacent stages only when their resources are equal, and decoding must never hold a GPU actor.
    task: dict[str, Any] = {"num_cpus": res.preprocess_cpus, "memory": preprocess_memory(config, resolution)}
    ds = plan.planned.to_dataset(plan.keep, **task)
    samples = config.model.samples_per_input
    ds = ds.map_batches(
        preprocess_batch,  # type: ignore[arg-type]  # fn_kwargs supplies its keyword-only parameters
        **one_block | {"udf_modifying_row_count": samples > 1},  # it draws the samples of each input
        **task,
        fn_kwargs={
            "job_seed": config.seed,
            "input_kind": config.input.kind,
            "resolution": resolution,
            "max_image_pixels": config.model.max_image_pixels,
            "keep_source_images": config.output.caption_image.keeps_source(config.model.mode),
            "samples_per_input": samples,
            "blocklist": _blocklist(config),
            "duplicates": {
                key: first for by in plan.duplicates.by_unit.values() for key, first in by.items()
            },
        },
    )
    judges: dict[str, Any] = {
        "compute": ActorPoolStrategy(size=res.clip_actors),
        "num_gpus": res.clip_gpus_per_actor,
        "num_cpus": res.clip_cpus_per_actor,
        "fn_constructor_args": (config,),
        "fn_constructor_kwargs": {"identity": plan.versions.clip, "head_identities": plan.versions.heads},
    }
    watermark = WatermarkSpec.of(config, plan.fingerprint)
    if config.curation.heads_for("input"):  # judge the input images before any model work
        ds = ds.map_batches(InputJudgeStage, **one_to_one, **judges)
    ds = ds.map_batches(
        generate_cls,
        **one_to_one,
        fn_constructor_args=(config,),
        fn_constructor_kwargs={"checkpoint_identity": plan.versions.checkpoint},
        compute=ActorPoolStrategy(size=res.actors),
        num_gpus=res.gpus_per_actor,
        num_cpus=res.cpus_per_actor,
    )
    if config.clip.enabled:
        scoring = judges | {
            "fn_constructor_kwargs": judges["fn_constructor_kwargs"] | {"watermark": watermark}
        }
        ds = ds.map_batches(ClipScoreStage, **one_to_one, **scoring)
    output = output_spec(config, plan.fingerprint, plan.unit_inputs(), _marks(config, plan))
    return ds.map_batches(
        WriteStage,
        **one_block | {"udf_modifying_row_count": True},  # a unit's rows in, one row of its counts out
        fn_constructor_args=(
            output,
            config.output.caption_image,
            FilterSpec.of(config),
            None if config.clip.enabled else watermark,
        ),
        compute=ActorPoolStrategy(size=res.writers),
        num_cpus=res.writer_cpus,
    )


def _marks(config: PipelineConfig, plan: RunPlan) -> JobMarks | None:
    """What every generated image carries; the C2PA signer is read and checked here, on the driver, before any
    model work."""
    if not config.model.mode.makes_image:
        return None
    c2pa = config.provenance.c2pa
    signer = None if c2pa is None else load_job_signer(c2pa, config.storage.storage_options())
    return job_marks(config, plan.versions.checkpoint, signer)


def find_duplicates(config: PipelineConfig, planned: PlannedInput) -> InputDuplicates | None:
    """The input's exact duplicates, when the job looks for them (every input is read once)."""
    if not config.curation.dedup.exact_inputs:
        return None
    return find_input_duplicates(planned, config.input.kind)


def plan_job(config: PipelineConfig) -> tuple[PlannedInput, RunPlan]:
    """The job's input, planned, and what a run over its output would keep, redo and remove (nothing runs or
    is written): what ``run`` acts on and ``validate --plan`` prints."""
    planned = plan_job_input(config)
    return planned, plan_run(config, planned, find_duplicates(config, planned))


def _blocklist(config: PipelineConfig) -> Blocklist | None:
    uri = config.curation.blocklist
    return Blocklist.load(uri, config.storage.storage_options()) if uri else None


def preprocess_memory(config: PipelineConfig, resolution: int) -> int:
    """Bytes a read + preprocess task reserves: a base for the interpreter and libraries, plus, for image
    inputs, each record's model-resolution pixels and its source file (estimated at the same size)."""
    base = 384 << 20  # a worker with torch, PIL and pyarrow loaded uses about 270 MiB before any record
    if config.input.kind != InputKind.IMAGES:
        return base
    records = config.output.shard_size * config.model.samples_per_input
    return base + records * resolution * resolution * 3 * 2


class ClusterTooSmallError(RuntimeError):
    """The cluster cannot hold the job's actors plus one task: Ray would wait forever."""


def check_cluster_fits(config: PipelineConfig) -> None:
    """Fail fast, with the numbers, when the job's actors (writers included) and one read + preprocess task
    cannot all be placed at once."""
    available = ray.cluster_resources()
    judges = config.judge_pools
    needs = {
        "CPU": config.resources.cpus_needed(judges=judges),
        "GPU": config.resources.gpus_needed(judges=judges),
    }
    short = {k: v for k, v in needs.items() if v > available.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(
            f"{k}: needs {v:g}, cluster has {available.get(k, 0.0):g}" for k, v in short.items()
        )
        raise ClusterTooSmallError(
            f"the cluster cannot run this job ({detail}: the engine, CLIP / head and writer actors plus one read "
            "+ preprocess task); lower resources.actors / *cpus* / *gpus* / writers, or add nodes"
        )


def run_pipeline(
    config: PipelineConfig, *, generate_cls: Callable[..., Any] = GenerateStage, progress: bool = True
) -> RunReport:
    """Run the job to completion on the current Ray cluster (started locally if none) and write the summary.

    Raises ``pipelines.writers.summary.AccountingError`` unless every record (each sample of each input) is
    written, rejected or errored, under a unique key.
    """
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    check_cluster_fits(config)
    options = config.storage.storage_options()
    planned, plan = plan_job(config)
    log.info("plan: %s", plan.describe())
    if plan.stale:
        log.warning("units %s were committed by another job configuration or input: redoing them", plan.stale)
    if plan.outside:
        log.warning("removing units %s: committed by an earlier run, not in this job's plan", plan.outside)
    retire_units(config.output.uri, plan.outside, options)
    samples = config.model.samples_per_input
    stats = ""
    if plan.to_run == 0:
        log.info("all %d units already committed: no model work to do", planned.num_units)
    else:
        ds = build_dataset(config, plan, generate_cls=generate_cls)
        ds.context.enable_progress_bars = progress
        for row in ds.iter_rows():
            log.info(
                "unit %05d committed: %s",
                row["unit"],
                {k: row[k] for k in ("written", "rejected", "errored")},
            )
        stats = ds.stats()
    dedup = (
        run_dedup_phase(config, output_spec(config, plan.fingerprint))
        if config.curation.dedup.phase
        else None
    )
    work = RunWork(
        wall_time_s=time.perf_counter() - started,
        units_run=plan.to_run,
        records_run=planned.records_in(u.index for u in plan.to_run_units()) * samples,
    )
    summary = write_summary(
        config.output.uri,
        inputs=planned.num_records,
        samples_per_input=samples,
        config=config.model_dump(mode="json"),
        run=work,
        versions=versions(),
        storage_options=options,
        extra={
            "units": planned.num_units,
            "units_skipped": len(plan.keep),
            "units_run": plan.to_run,
            "units_redone": len(plan.stale),  # of units_run: committed before, by another config or input
            "units_removed": len(plan.outside),
            "excluded": dict(planned.excluded),  # not records: img2dataset's failed downloads, by status
            "input_duplicates": plan.duplicates.count,
            **({"dedup": vars(dedup)} if dedup is not None else {}),
            "name": config.name,
            "fingerprint": plan.fingerprint,
            "model_versions": dataclasses.asdict(plan.versions),  # identities of what the actors loaded
            "engine_threads": config.resources.engine_threads if config.device == "cpu" else None,
        },
    )
    write_dataset_card(config, summary, options)
    if "webdataset" in config.output.formats:
        write_wids_index(config.output.uri, options)
    return RunReport(
        summary=summary,
        units_total=planned.num_units,
        units_skipped=len(plan.keep),
        units_run=plan.to_run,
        stats=stats,
    )
