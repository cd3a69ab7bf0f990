"""Locations: local paths, ``file://`` URIs and any fsspec URI (``s3://``, ``gs://``, ...), in one place.

Light (no torch), so readers, validators and the CLI use it too. A URI typed with credentials in it
(``s3://KEY:SECRET@bucket/...``) is never echoed back: ``redact`` strips the user-info part wherever a URI is
printed or stored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def is_local(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names the local filesystem (a plain path or ``file://``)."""
    text = os.fspath(uri)
    return "://" not in text or text.startswith("file://")


def local_path(uri: str | os.PathLike) -> Path:
    """The local path of a plain path or ``file://`` URI (``~`` expanded)."""
    return Path(os.fspath(uri).removeprefix("file://")).expanduser()


def open_location(
    uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """The filesystem of ``uri`` and the path inside it (protocol stripped)."""
    text = os.fspath(uri)
    target = str(local_path(text)) if is_local(text) else text
    fs, path = fsspec.core.url_to_fs(target, **dict(storage_options or {}))
    return fs, path


def redact(uri: str | os.PathLike) -> str:
    """``uri`` without ``user:password@`` (safe to print, log or store)."""
    return _USERINFO.sub(r"\g<scheme>", os.fspath(uri))


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, with any URI credentials in the message removed."""
    return redact(f"{type(exc).__name__}: {exc}")
