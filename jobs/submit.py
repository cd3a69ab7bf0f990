"""Cluster submission through the Ray Jobs API: the spec travels in the job's runtime environment."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from pipelines.config import PipelineConfig

SPEC_NAME = "job.yaml"
_AGENT_NOT_READY = "No available agent"  # the Jobs API's answer while a new head's job agent starts


def _client(address: str):
    from ray.job_submission import JobSubmissionClient  # needs ray[default] (the dashboard) on the head

    return JobSubmissionClient(address)


def submit(
    config: PipelineConfig,
    *,
    address: str,
    extra_runtime_env: dict | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Submit ``config`` (already validated) as a Ray job running ``unidiffuser-batch run``; returns its id.

    A head that has just started answers "No available agent" until its job agent is up: that answer is
    retried for up to ``agent_wait_s`` seconds, every other error is raised at once.
    """
    folder = Path(tempfile.mkdtemp(prefix="unidiffuser-job-"))
    try:
        (folder / SPEC_NAME).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        runtime_env = {"working_dir": str(folder), **(extra_runtime_env or {})}
        client = _client(address)
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                return client.submit_job(
                    entrypoint=f"unidiffuser-batch run {SPEC_NAME}",
                    runtime_env=runtime_env,
                    metadata={"name": config.name},
                )
            except RuntimeError as exc:
                if _AGENT_NOT_READY not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(2.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def status(job_id: str, *, address: str) -> str:
    return str(_client(address).get_job_status(job_id))


def logs(job_id: str, *, address: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, *, address: str) -> bool:
    return bool(_client(address).stop_job(job_id))
