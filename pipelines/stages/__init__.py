"""The pipeline's stages, in the order a record meets them; each runs on one unit's block at a time.

preprocess (tasks) may turn each input into several samples; generate and score map rows 1:1 and filter only
marks rows rejected (nothing is dropped); write turns a unit's rows into one row of counts.
"""
