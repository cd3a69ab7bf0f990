"""Fixtures for head tests: put a local head folder on the loopback S3 server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import s3fs


@pytest.fixture()
def upload(s3_bucket: str, s3fs_storage_options: dict) -> Callable[[Path, str], str]:
    """``upload(folder, name)`` copies a local folder to s3://<fresh bucket>/heads/<name>; returns the URI."""

    def put(folder: Path, name: str) -> str:
        fs = s3fs.S3FileSystem(**s3fs_storage_options, skip_instance_cache=True)
        fs.put(str(folder) + "/", f"{s3_bucket}/heads/{name}", recursive=True)
        assert {p.rsplit("/", 1)[1] for p in fs.find(f"{s3_bucket}/heads/{name}")} == {
            p.name for p in folder.iterdir()
        }
        return f"s3://{s3_bucket}/heads/{name}"

    return put
