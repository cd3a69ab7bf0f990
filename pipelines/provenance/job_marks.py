"""The marks a job's writers put into every generated image it writes: the XMP generation record (always) and,
when the job asks for one, a signed C2PA manifest (``provenance.c2pa``).

``JobMarks`` holds what is the same for every record of the job (software, model and its version, sampler
settings, the job's name, the signer); ``record(row)`` adds what each record has of its own (mode, prompt, seed,
key). The signer is loaded and checked on the driver (``load_job_signer``) and travels to the writer actors as
plain bytes with the job's ``OutputSpec``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines import records as r
from pipelines import storage
from pipelines.provenance.c2pa_manifest import C2paSigner, SignerError, load_signer, sign_image
from pipelines.provenance.spec import C2paSpec
from unidiffuser.marks.marking import mark_image
from unidiffuser.marks.record import GenerationRecord

SOFTWARE = "unidiffuser-batch"


@dataclass(frozen=True)
class JobMarks:
    """The job-wide part of every generated image's record, and the job's C2PA signer (None: no manifest)."""

    job: str
    model_id: str
    model_version: str
    steps: int
    guidance_scale: float
    cfg_mode: str
    data_type: int
    dtype: str
    software_version: str
    signer: C2paSigner | None = None

    def record(self, row: Mapping[str, Any]) -> GenerationRecord:
        """The generation record of one written row (its mode, prompt, seed and key)."""
        return GenerationRecord(
            software=SOFTWARE,
            software_version=self.software_version,
            model_id=self.model_id,
            model_version=self.model_version,
            mode=str(row[r.MODE]),
            prompt=row.get(r.PROMPT_USED) or row.get(r.PROMPT) or None,
            seed=int(row[r.SEED]),
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            cfg_mode=self.cfg_mode,
            data_type=self.data_type,
            dtype=self.dtype,
            job=self.job,
            key=str(row[r.KEY]),
        )

    def mark(self, data: bytes, fmt: str, row: Mapping[str, Any]) -> bytes:
        """``data`` (the row's encoded generated image) with its XMP record, then its C2PA manifest.
        ``MarkingError`` (naming the key) when the image cannot carry them."""
        record = self.record(row)
        marked = mark_image(data, fmt, record)
        return marked if self.signer is None else sign_image(marked, fmt, self.signer, record)


def load_job_signer(spec: C2paSpec, storage_options: Mapping[str, Any] | None = None) -> C2paSigner:
    """The signer of ``provenance.c2pa``: certificate chain and key read from their locations (local or any fsspec
    URI), the key's password from the environment variable the spec names. SignerError with one clear line."""
    password = None
    if spec.key_password_env is not None:
        value = os.environ.get(spec.key_password_env)
        if value is None:
            raise SignerError(
                f"provenance.c2pa.key_password_env: the environment variable {spec.key_password_env} is not set"
            )
        password = value.encode()
    return load_signer(
        _read(spec.certificate, "certificate", storage_options),
        _read(spec.private_key, "private_key", storage_options),
        key_password=password,
        tsa_url=spec.tsa_url,
    )


def _read(uri: str, what: str, storage_options: Mapping[str, Any] | None) -> bytes | str:
    """A local file as its path (the signer's messages name it), a remote one as its bytes."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    try:
        fs, path = storage.open_filesystem(uri, storage_options)
        return storage.read_bytes(fs, path)
    except (OSError, ValueError) as error:
        raise SignerError(f"provenance.c2pa.{what}: cannot read {uri}: {error}") from None
