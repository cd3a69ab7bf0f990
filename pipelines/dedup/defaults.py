"""Default thresholds of the near-duplicate search, as measured on the shapes world (bench/dedup.py quality).

- ``IMAGE_THRESHOLD`` (cosine of CLIP image embeddings) 0.95: the planted copies of a scene (re-rendered 1-2 px
  off, JPEG, resized) pair with their original at or above it 95 % of the time. The demo model's CLIP barely
  encodes where a shape is, so distinct scenes that differ only in position also pass; confirming image pairs
  by pHash (``MAX_HAMMING``) removes most of those (docs/benchmarks.md has the curve and the figures).
- ``MAX_HAMMING`` 20 bits of 64: the pHash confirmation's bound at that threshold (best F1 on the shapes
  world; re-encoded and resized copies stay within 14 bits, shifted re-renders reach 32).
- ``TEXT_THRESHOLD`` (cosine of CLIP text embeddings) 0.985: paraphrases of one scene's caption pair at or
  above it 96 % of the time, captions of scenes that differ in more than position 5 % of the time.

They are starting points for the shapes family's CLIP; a job with another CLIP model should measure its own
(the benchmark takes ``--image-threshold``, ``--text-threshold`` and ``--max-hamming``).
"""

from __future__ import annotations

IMAGE_THRESHOLD = 0.95
TEXT_THRESHOLD = 0.985
MAX_HAMMING = 20
