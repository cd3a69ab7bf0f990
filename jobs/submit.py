"""Cluster submission through the Ray Jobs API: the spec travels in the job's runtime environment."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

from pipelines.config import PipelineConfig

SPEC_NAME = "job.yaml"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient  # needs ray[default] (the dashboard) on the head

    return JobSubmissionClient(address)


def submit(config: PipelineConfig, *, address: str, extra_runtime_env: dict | None = None) -> str:
    """Submit ``config`` (already validated) as a Ray job running ``unidiffuser-batch run``; returns its id."""
    folder = Path(tempfile.mkdtemp(prefix="unidiffuser-job-"))
    try:
        (folder / SPEC_NAME).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        runtime_env = {"working_dir": str(folder), **(extra_runtime_env or {})}
        return _client(address).submit_job(
            entrypoint=f"unidiffuser-batch run {SPEC_NAME}",
            runtime_env=runtime_env,
            metadata={"name": config.name},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def status(job_id: str, *, address: str) -> str:
    return str(_client(address).get_job_status(job_id))


def logs(job_id: str, *, address: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, *, address: str) -> bool:
    return bool(_client(address).stop_job(job_id))
