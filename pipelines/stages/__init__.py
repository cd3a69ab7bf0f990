"""The pipeline's stages, in the order a record meets them. Each is a 1:1 row map over one unit's block."""
