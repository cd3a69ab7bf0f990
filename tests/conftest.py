"""Shared fixtures: offline hub settings, a real S3 API (moto server) on loopback, one local Ray for the session,
no leaked torch threads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a loaded CI machine can take longer than Ray's 10 s default for a raylet to register with its GCS
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
# a run that stops moving fails within minutes instead of after Ray Data's default half hour
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The AWS environment names the loopback S3 server from the moment the suite is imported, before any test starts
# a Ray (a CLI test, a pipeline test): Ray workers inherit the environment of the moment ``ray.init`` runs, so a
# Ray started before the server fixture would otherwise have workers without credentials.
_S3_PORT = _free_port()
_S3_ENDPOINT = f"http://127.0.0.1:{_S3_PORT}"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": _S3_ENDPOINT,
        "AWS_ENDPOINT_URL_S3": _S3_ENDPOINT,
    }
)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start a moto S3 server on the loopback port the AWS environment already names, for the whole session."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(_S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", _S3_PORT), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:  # pragma: no cover - only when moto cannot start
        proc.kill()
        raise RuntimeError(f"moto server did not start on port {_S3_PORT} within 60 s")
    try:
        yield _S3_ENDPOINT
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint: str) -> Iterator[None]:
    """A 2-CPU local Ray for the whole session, shut down after it.

    It depends on ``s3_endpoint`` so that the AWS environment pointing at the loopback S3 server is set
    before Ray starts: Ray workers inherit the environment of the moment ``ray.init`` runs.
    """
    import ray

    if ray.is_initialized():  # started by a test that runs a job without this fixture: reuse it
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local: None) -> str:
    """The GCS address of the session's Ray, for a CLI subprocess to join as ``RAY_ADDRESS`` (a driver of its
    own on a running cluster, as on a real one) instead of starting a local Ray of its own."""
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """A test that sets torch's intra-op thread count (an engine stage run in this process) gives it back: a CPU
    model's output depends on it, and a later test comparing with another process must not inherit it."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3fs_storage_options(s3_endpoint: str) -> dict:
    """Storage options for fsspec/s3fs that reach the loopback server (as production passes an endpoint)."""
    return {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: they are skipped (with the reason shown) where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
