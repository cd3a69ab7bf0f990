"""The shapes world and the small UniDiffuser family trained on it (``models/unidiffuser-shapes``).

A procedural world of coloured shapes with captions, a detector and quality judge for it, and the training of
each part of the family (autoencoder, CLIP, caption decoder, U-ViT with UniDiffuser's objective). Used by the
demo, ``bench/`` and tests to check meaning rather than plumbing; never by the engine or the pipelines.

    python -m shapes.train --out models/unidiffuser-shapes --seed 0 [--quick]
"""
