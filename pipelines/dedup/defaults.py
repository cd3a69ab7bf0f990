"""Default thresholds of the near-duplicate search, as measured on the shapes world (``bench/dedup.py quality``,
figures in docs/benchmarks.md, "De-duplication"), with the demo model's CLIP.

- ``IMAGE_THRESHOLD`` 0.95 (cosine of CLIP image embeddings): 95 % of the planted copy pairs of a scene
  (re-rendered 1-2 px off 93 %, JPEG 97 %, resized 100 %) and 95 % of the pairs of images the engine drew
  from one prompt are at or above it. Below it recall falls slowly, above it fast (0.97: 89 %, 0.985: 78 %).
- ``MAX_HAMMING`` 20 of 64 pHash bits, to confirm image pairs when the duplicates sought are copies of one
  picture: the demo CLIP barely encodes where a shape is (or, often, which shape), so on its own the image
  threshold also pairs distinct scenes (pair precision 0.35); confirmed by pHash, precision is 0.92 with
  recall 0.87 (the records removed: 0.95 of them right, 0.93 of the copies removed). JPEG and resized copies
  stay within 14 bits, shifted re-renders reach 32. Not for mode collapse: images drawn from one prompt
  differ in their pixels, and pHash confirms only 22 % of those pairs.
- ``TEXT_THRESHOLD`` 0.985 (cosine of CLIP text embeddings): 96 % of paraphrase pairs are at or above it,
  and 95 % of the pairs above it are paraphrases once captions that differ only in a position word are set
  aside; the demo CLIP's text tower puts "lower left" and "lower right" at cosine 0.9998, which no
  threshold separates (pair precision counting those: 0.45).

They are starting points for the shapes family's CLIP; a job with another CLIP model should measure its own
(the benchmark takes ``--image-threshold``, ``--text-threshold`` and ``--max-hamming``).
"""

from __future__ import annotations

IMAGE_THRESHOLD = 0.95
TEXT_THRESHOLD = 0.985
MAX_HAMMING = 20
