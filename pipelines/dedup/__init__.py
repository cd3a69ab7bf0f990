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
"""

from pipelines.dedup.exact import first_occurrences, image_fingerprint, normalise_prompt, prompt_fingerprint
from pipelines.dedup.groups import Removal, group_removals
from pipelines.dedup.pairs import Pairs
from pipelines.dedup.phash import hamming, phash
from pipelines.dedup.references import (
    ReferenceRemoval,
    ReferenceSet,
    ReferenceSpec,
    load_reference,
    reference_removals,
    validate_reference,
)
from pipelines.dedup.search import SearchConfig, find_new_pairs, find_pairs, nearest_matches, plan_search
from pipelines.dedup.vectors import ArrayVectors, ConcatVectors, NpyVectors, VectorSource

__all__ = [
    "ArrayVectors",
    "ConcatVectors",
    "NpyVectors",
    "Pairs",
    "ReferenceRemoval",
    "ReferenceSet",
    "ReferenceSpec",
    "Removal",
    "SearchConfig",
    "VectorSource",
    "find_new_pairs",
    "find_pairs",
    "first_occurrences",
    "group_removals",
    "hamming",
    "image_fingerprint",
    "load_reference",
    "nearest_matches",
    "normalise_prompt",
    "phash",
    "plan_search",
    "prompt_fingerprint",
    "reference_removals",
    "validate_reference",
]
