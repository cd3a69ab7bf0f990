"""Versions of the packages that shape a job's output (written into ``_summary.json``)."""

from __future__ import annotations

from importlib import metadata

PACKAGES = (
    "unidiffuser-batch",
    "torch",
    "diffusers",
    "transformers",
    "ray",
    "pyarrow",
    "webdataset",
    "fsspec",
    "s3fs",
)


def versions() -> dict[str, str]:
    """Installed version of each package in ``PACKAGES`` ("missing" if absent)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def package_version() -> str:
    """This package's own version (written into every generation record)."""
    return versions()["unidiffuser-batch"]
