"""What an fsspec listing says about a file's version (light: no torch), for caches and resume checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# S3's ETag, GCS' generation or MD5, else the modification time of local and other filesystems
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated")


def file_version(info: Mapping[str, Any]) -> str | None:
    """What a listing entry reports changing when its file is rewritten, or None when it reports nothing."""
    for key in _VERSION_KEYS:
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return None
