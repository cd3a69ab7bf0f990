"""De-duplication core: exact input duplicates, near-duplicates across a job and across runs, and
decontamination against reference sets. One concept per module:

- ``exact``: prompt normalisation, byte fingerprints, the first occurrence of each in plan order;
- ``phash``: 64-bit perceptual hashes of images and their Hamming distances;
- ``vectors``: where embeddings are read from, chunk by chunk (arrays, ``.npy`` files on any filesystem);
- ``search``: every pair at or above a cosine threshold (``flat``: exact faiss search; ``ivf``: an IVF index
  searched list by list), incremental (new against old + new), optionally in Ray tasks (``tasks``);
  ``pairs``: the pairs and the rules every search applies to them;
- ``groups``: union-find groups of pairs and the decision of which record of each group stays;
- ``references``: loading and checking reference embedding sets, and the records within their threshold.

Nothing here reads the pipeline's units or writes outputs: the pipeline's dedup phase does, with these.

Names are imported lazily, so ``pipelines.dedup.spec`` (which the job spec embeds) loads without faiss.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "first_occurrences": "pipelines.dedup.exact",
    "image_fingerprint": "pipelines.dedup.exact",
    "normalise_prompt": "pipelines.dedup.exact",
    "prompt_fingerprint": "pipelines.dedup.exact",
    "Removal": "pipelines.dedup.groups",
    "group_removals": "pipelines.dedup.groups",
    "Pairs": "pipelines.dedup.pairs",
    "hamming": "pipelines.dedup.phash",
    "phash": "pipelines.dedup.phash",
    "ReferenceRemoval": "pipelines.dedup.references",
    "ReferenceSet": "pipelines.dedup.references",
    "ReferenceSpec": "pipelines.dedup.references",
    "load_reference": "pipelines.dedup.references",
    "reference_removals": "pipelines.dedup.references",
    "validate_reference": "pipelines.dedup.references",
    "SearchConfig": "pipelines.dedup.search",
    "find_new_pairs": "pipelines.dedup.search",
    "find_pairs": "pipelines.dedup.search",
    "nearest_matches": "pipelines.dedup.search",
    "plan_search": "pipelines.dedup.search",
    "ArrayVectors": "pipelines.dedup.vectors",
    "ConcatVectors": "pipelines.dedup.vectors",
    "NpyVectors": "pipelines.dedup.vectors",
    "VectorSource": "pipelines.dedup.vectors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines.dedup' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
