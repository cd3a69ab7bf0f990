"""Mark encoded image bytes as machine-generated, and read the marks back.

``mark_image(data, fmt, record)`` puts the XMP packet of ``record`` (IPTC digital source type
``trainedAlgorithmicMedia`` + the generation record) into JPEG, PNG or WebP bytes, and for PNG also the
``parameters`` text other generators write. Only metadata segments and chunks change: the pixels decode
bit-identically. ``read_marks(data)`` finds the packet in any of the three formats, whatever wrote it.

A record that the format cannot hold (JPEG: the packet must fit one 64 KiB APP1 segment) or bytes that are not a
well-formed file of ``fmt`` raise ``MarkingError``, which names the record key: one record's error row.
"""

from __future__ import annotations

from dataclasses import dataclass

from unidiffuser.marks import containers
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import parse_xmp, xml_safe, xmp_packet

PNG_PARAMETERS_KEYWORD = "parameters"
_FORMATS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


class MarkingError(ValueError):
    """One record's image could not be marked; the message names the record key (and the size, if too big)."""

    def __init__(self, key: str, reason: str, size: int | None = None) -> None:
        super().__init__(f"record {key!r}: cannot mark image: {reason}")
        self.key, self.reason, self.size = key, reason, size


@dataclass(frozen=True)
class ImageMarks:
    """The provenance marks found in an image file."""

    format: str  # jpg, png or webp
    xmp: bytes  # the XMP packet as stored
    digital_source_type: str | None  # the IPTC URI, None if the packet has none
    record: GenerationRecord | None  # None when the packet holds no (complete) record of ours
    parameters: str | None  # the PNG ``parameters`` text, None elsewhere or when absent


def mark_image(data: bytes, fmt: str, record: GenerationRecord) -> bytes:
    """``data`` (an encoded ``fmt`` image: jpg/jpeg, png or webp) with ``record``'s XMP (and PNG parameters)."""
    ext = _FORMATS.get(fmt.lower().lstrip("."))
    if ext is None:
        raise ValueError(f"unsupported image format {fmt!r} (expected jpg, png or webp)")
    packet = xmp_packet(record)
    try:
        if containers.sniff_format(data) != ext:
            raise containers.ContainerError(f"the bytes are not a {ext} file")
        if ext == "jpg":
            return containers.insert_jpeg_xmp(data, packet)
        if ext == "webp":
            return containers.insert_webp_xmp(data, packet)
        chunks = {
            containers.PNG_XMP_KEYWORD: containers.png_itxt_chunk(
                containers.PNG_XMP_KEYWORD, packet.decode()
            ),
            PNG_PARAMETERS_KEYWORD: containers.png_text_chunk(
                PNG_PARAMETERS_KEYWORD, xml_safe(record.parameters_text())
            ),
        }
        return containers.insert_png_chunks(data, chunks)
    except containers.PayloadTooLarge as error:
        raise MarkingError(record.key, str(error), size=error.size) from None
    except containers.ContainerError as error:
        raise MarkingError(record.key, str(error)) from None


def read_marks(data: bytes) -> ImageMarks | None:
    """The marks in JPEG, PNG or WebP ``data``; None when it has no XMP packet or is none of those formats.

    ValueError when the file is malformed or its XMP is not XML.
    """
    fmt = containers.sniff_format(data)
    if fmt is None:
        return None
    parameters = None
    if fmt == "jpg":
        packet = containers.extract_jpeg_xmp(data)
    elif fmt == "webp":
        packet = containers.extract_webp_xmp(data)
    else:
        text = containers.extract_png_text(data, containers.PNG_XMP_KEYWORD)
        packet = None if text is None else text.encode("utf-8")
        parameters = containers.extract_png_text(data, PNG_PARAMETERS_KEYWORD)
    if packet is None:
        return None
    content = parse_xmp(packet)
    return ImageMarks(fmt, packet, content.digital_source_type, content.record, parameters)
