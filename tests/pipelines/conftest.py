"""Fixtures for pipeline tests: one small local Ray for the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # shared helpers such as img2dataset_layouts


@pytest.fixture(scope="session")
def ray_local(s3_endpoint: str) -> Iterator[None]:
    """A 2-CPU local Ray for the whole session, shut down after it.

    It depends on ``s3_endpoint`` so that the AWS environment pointing at the loopback S3 server is set
    before Ray starts: Ray workers inherit the environment of the moment ``ray.init`` runs.
    """
    import ray

    if ray.is_initialized():  # started by another test package: reuse it, do not shut it down
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
