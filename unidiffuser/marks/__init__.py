"""What a generated image file says about itself: the generation record (``record``), its XMP packet with the
IPTC digital source type ``trainedAlgorithmicMedia`` (``xmp``), JPEG/PNG/WebP byte surgery that inserts and
finds it without touching a pixel (``containers``), and ``marking`` (mark_image / read_marks).

Standard library only, so the engine's own outputs (``python -m unidiffuser sample``) are marked as the
pipelines' are; the pipelines add the job's parts (watermark, C2PA, the job's record fields) in
``pipelines.provenance``.
"""
