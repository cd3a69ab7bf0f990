"""Every shipped spec (jobs/specs and the KubeRay ConfigMap) passes the CLI's full validator — structure and
reachability — against object storage laid out as the specs expect (a moto S3 server on loopback)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import boto3
import pytest
import yaml

from .conftest import cli

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SPECS = ["synthetic-t2i.yaml", "joint-pairs.yaml", "caption-corpus.yaml", "image-variation.yaml"]


def _tar_with_one_image() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("000000000.png")
        data = next((ROOT / "jobs" / "demo" / "images").glob("*.png")).read_bytes()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def spec_buckets(s3_endpoint: str, tiny_models) -> None:
    """The buckets and objects the shipped specs name: inputs, a checkpoint's configs, a CLIP folder."""
    checkpoint, clip = tiny_models
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("my-bucket", "my-models"):
        s3.create_bucket(Bucket=bucket)
    for path in checkpoint.rglob("*"):  # the whole (tiny) checkpoint: validate reads its configs and headers
        if path.is_file():
            key = f"unidiffuser-v1/{path.relative_to(checkpoint)}"
            s3.put_object(Bucket="my-models", Key=key, Body=path.read_bytes())
    s3.put_object(
        Bucket="my-models", Key="clip-vit-large-patch14/config.json", Body=(clip / "config.json").read_bytes()
    )
    s3.put_object(Bucket="my-bucket", Key="prompts/part-0.jsonl", Body=b'{"prompt": "a red circle"}\n')
    s3.put_object(Bucket="my-bucket", Key="corpus/00000.tar", Body=_tar_with_one_image())
    s3.put_object(Bucket="my-bucket", Key="corpus/incoming/00001.tar", Body=_tar_with_one_image())
    s3.put_object(Bucket="my-bucket", Key="seed-images/a.png", Body=b"png bytes are not checked here")


@pytest.mark.parametrize("name", CLUSTER_SPECS)
@pytest.mark.slow
def test_shipped_cluster_spec_validates(spec_buckets, name: str):
    proc = cli("validate", str(ROOT / "jobs" / "specs" / name))
    assert proc.stdout.startswith("ok:"), proc.stdout


@pytest.mark.slow
def test_kuberay_configmap_spec_validates(spec_buckets, tmp_path: Path):
    configmap = yaml.safe_load((ROOT / "infra" / "kuberay" / "job-spec-configmap.yaml").read_text())
    spec = tmp_path / "job.yaml"
    spec.write_text(configmap["data"]["job.yaml"])
    assert cli("validate", str(spec)).stdout.startswith("ok:")


@pytest.mark.slow
def test_validator_notices_a_missing_bucket_object(spec_buckets):
    proc = cli("validate", str(ROOT / "jobs" / "specs" / "synthetic-t2i.yaml"),
               "--set", "input.uri=s3://my-bucket/nothing-here/*.jsonl", check=False)  # fmt: skip
    assert (
        proc.returncode == 2
        and "input.uri: nothing found at s3://my-bucket/nothing-here/*.jsonl" in proc.stderr
    )
