"""Provenance marks for generated images (EU AI Act Art. 50: synthetic content marked machine-readably).

Every image gets ``mark_image``: XMP with the IPTC digital source type ``trainedAlgorithmicMedia`` and the
generation record (PNG: also the A1111-style ``parameters`` text), inserted into the encoded bytes without
touching a pixel. Optional, per job: an invisible watermark in the pixels before encoding (``watermark``,
off by default) and a C2PA manifest signed with the user's own certificate (``c2pa_manifest``), applied last.

    pixels = embed_watermark(pixels, watermark_payload(job_identity))        # optional, before encoding
    data = mark_image(encode(pixels), "png", record)                         # always
    data = sign_image(data, "png", signer, record)                           # optional, signer = load_signer(...)

The marks every image carries live with the engine (``unidiffuser.marks``: the record, the XMP packet, the
container surgery, mark_image / read_marks; re-exported here). Modules of this package: ``watermark``,
``c2pa_manifest``, ``job_marks`` (what a job's writers put in), ``verify`` and ``verify_targets``.
"""

from pipelines.provenance.c2pa_manifest import (
    C2paSigner,
    ManifestCheck,
    SignerError,
    load_signer,
    sign_image,
    verify_manifest,
)
from pipelines.provenance.watermark import (
    WatermarkError,
    detect_watermark,
    embed_watermark,
    is_watermarked,
    watermark_match,
    watermark_payload,
)
from unidiffuser.marks.marking import ImageMarks, MarkingError, mark_image, read_marks
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA, xmp_packet

__all__ = [
    "TRAINED_ALGORITHMIC_MEDIA",
    "C2paSigner",
    "GenerationRecord",
    "ImageMarks",
    "ManifestCheck",
    "MarkingError",
    "SignerError",
    "WatermarkError",
    "detect_watermark",
    "embed_watermark",
    "is_watermarked",
    "load_signer",
    "mark_image",
    "read_marks",
    "sign_image",
    "verify_manifest",
    "watermark_match",
    "watermark_payload",
    "xmp_packet",
]
