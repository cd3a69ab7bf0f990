"""Building blocks of the job spec's sections (``pipelines.config``), shared by every section model.

``Location``: a spec field holding a path or URI. Relative local paths in a spec file are resolved against the
spec's folder, those given on the command line against the current folder (``jobs/spec.py`` finds them by the
``IsLocation`` mark); an object-store URI with credentials in it is refused without being echoed.
``Strict``: the base of every section: unknown keys are errors, numbers and booleans are taken only as
themselves (``steps: true`` is refused, not read as 1).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from unidiffuser.locations import redact


class IsLocation:
    """Marks a spec field holding a location (path or URI)."""


_OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "r2")


def _no_credentials(uri: str) -> str:
    """Object stores take credentials from the environment only: a key typed into a URI would end up in
    request paths and logs, so it is refused (and never echoed)."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.lower() in _OBJECT_STORES and "@" in rest.split("/", 1)[0]:
        raise ValueError(
            f"credentials in a URI are not used ({redact(uri)}): give them through the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role)"
        )
    return uri


Location = Annotated[str, IsLocation(), AfterValidator(_no_credentials)]


class Strict(BaseModel):
    """A spec section: unknown keys are errors, and numbers and booleans are taken only as themselves."""

    model_config = ConfigDict(extra="forbid", strict=True)
