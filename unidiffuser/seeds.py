"""A record's seed: the one number all of its randomness is drawn from (``unidiffuser.noise.RecordNoise``).

Pure hashing, no torch: the pipeline's preprocessing derives seeds on CPU workers that never load a model.
"""

from __future__ import annotations

import hashlib


def derive_seed(job_seed: int, key: str) -> int:
    """A record's seed from the job seed and the record's key: stable across runs, machines and batchings."""
    digest = hashlib.sha256(f"{job_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
