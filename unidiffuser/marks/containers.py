"""Byte-level metadata surgery on encoded JPEG, PNG and WebP files: put an XMP packet (and PNG text chunks) where
readers look for it, and find it again, without decoding or re-encoding a single pixel.

Where each format keeps its XMP (and where exiftool, Pillow and libwebp read it):

- JPEG: an APP1 segment ``FF E1``, its payload ``http://ns.adobe.com/xap/1.0/\\0`` + the packet (XMP
  Specification Part 3, 1.1.3). A segment length is 16 bits and counts itself, so the payload holds at most
  65533 bytes and the packet at most 65504. It is placed after SOI and the APP0 (JFIF) and Exif APP1 segments
  that must come first; an XMP segment already there is replaced.
- PNG: an uncompressed ``iTXt`` chunk with keyword ``XML:com.adobe.xmp`` (Part 3, 1.1.5), here before the first
  ``IDAT``; so are the other text chunks given (``parameters``). Chunks of the same keyword are replaced.
- WebP: an ``XMP `` chunk after the image data in an extended-format (``VP8X``) RIFF, whose XMP flag is set.
  A simple file (``VP8 `` or ``VP8L`` alone, what Pillow writes) becomes extended: a ``VP8X`` header with the
  canvas size read from the bitstream's own frame header is put in front of the image chunk.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping

JPEG_XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
JPEG_SEGMENT_PAYLOAD_MAX = 65533  # 0xFFFF minus the two length bytes
JPEG_XMP_PACKET_MAX = JPEG_SEGMENT_PAYLOAD_MAX - len(JPEG_XMP_NAMESPACE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_XMP_KEYWORD = "XML:com.adobe.xmp"
_PNG_CHUNK_MAX = 2**31 - 1  # PNG chunk lengths are 31-bit
_WEBP_CHUNK_MAX = 2**32 - 2  # RIFF sizes are 32-bit, chunks padded to even
_WEBP_XMP_FLAG = 0x04
_WEBP_ALPHA_FLAG = 0x10


class ContainerError(ValueError):
    """The bytes are not a well-formed file of the format, or cannot hold what is asked."""


class PayloadTooLarge(ContainerError):
    """A metadata payload exceeds what the format's segment or chunk can hold."""

    def __init__(self, fmt: str, size: int, limit: int, what: str) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the {fmt} limit of {limit} bytes")
        self.fmt, self.size, self.limit = fmt, size, limit


def sniff_format(data: bytes) -> str | None:
    """``jpg``, ``png`` or ``webp`` from the file's magic bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# --- JPEG ------------------------------------------------------------------------------------------------------


def _jpeg_header_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment after SOI up to (not including) the first SOS."""
    if data[:2] != b"\xff\xd8":
        raise ContainerError("not a JPEG: no SOI marker")
    pos = 2
    while True:
        start = pos
        if pos >= len(data) or data[pos] != 0xFF:
            raise ContainerError(f"not a JPEG: expected a marker at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            raise ContainerError("truncated JPEG: no SOS segment")
        marker = data[pos]
        pos += 1
        if marker == 0xDA or marker == 0xD9:  # SOS: entropy-coded data follows; EOI: an image-less stream
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            continue
        if pos + 2 > len(data):
            raise ContainerError("truncated JPEG segment header")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > len(data):
            raise ContainerError(f"malformed JPEG segment 0x{marker:02X} at byte {start}")
        pos += length
        yield marker, start, pos


def _is_jpeg_xmp(data: bytes, start: int, end: int) -> bool:
    return data[start + 1] == 0xE1 and data[start + 4 : end].startswith(JPEG_XMP_NAMESPACE)


def insert_jpeg_xmp(data: bytes, packet: bytes) -> bytes:
    """``data`` with ``packet`` as its (only) XMP APP1 segment."""
    if len(packet) > JPEG_XMP_PACKET_MAX:
        raise PayloadTooLarge(
            "JPEG APP1",
            len(JPEG_XMP_NAMESPACE) + len(packet),
            JPEG_SEGMENT_PAYLOAD_MAX,
            "XMP segment payload",
        )
    segments = list(_jpeg_header_segments(data))
    # JFIF's APP0 must follow SOI, and Exif readers expect their APP1 first: insert after the leading run of them
    insert_at = 2
    for marker, start, end in segments:
        is_exif = marker == 0xE1 and data[start + 4 : start + 10] == b"Exif\x00\x00"
        if marker != 0xE0 and not is_exif:
            break
        insert_at = end
    payload = JPEG_XMP_NAMESPACE + packet
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    out = bytearray(data[:insert_at]) + segment
    pos = insert_at
    for _, start, end in segments:  # copy the rest, leaving any earlier XMP segment out
        if start < insert_at:
            continue
        out += data[pos:start]
        if not _is_jpeg_xmp(data, start, end):
            out += data[start:end]
        pos = end
    out += data[pos:]
    return bytes(out)


def extract_jpeg_xmp(data: bytes) -> bytes | None:
    """The packet of the first XMP APP1 segment, or None."""
    for marker, start, end in _jpeg_header_segments(data):
        if marker == 0xE1 and _is_jpeg_xmp(data, start, end):
            return data[start + 4 + len(JPEG_XMP_NAMESPACE) : end]
    return None


# --- PNG -------------------------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(type, start, end)`` of every chunk, each checked for length and CRC."""
    if data[:8] != PNG_SIGNATURE:
        raise ContainerError("not a PNG: bad signature")
    pos = 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise ContainerError(f"truncated PNG chunk at byte {pos}")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ContainerError(f"truncated PNG chunk {kind!r} at byte {pos}")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ContainerError(f"PNG chunk {kind!r} at byte {pos} fails its CRC")
        yield kind, pos, end
        pos = end
        if kind == b"IEND":
            return
    raise ContainerError("truncated PNG: no IEND chunk")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    if len(body) > _PNG_CHUNK_MAX:
        raise PayloadTooLarge("PNG chunk", len(body), _PNG_CHUNK_MAX, f"{kind.decode()} chunk")
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_text_chunk(keyword: str, text: str) -> bytes:
    """A ``tEXt`` chunk when ``text`` is Latin-1 (what the PNG spec allows there), else an uncompressed
    UTF-8 ``iTXt`` chunk. ``text`` must hold no NUL."""
    try:
        return _png_chunk(b"tEXt", keyword.encode("latin-1") + b"\x00" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return png_itxt_chunk(keyword, text)


def png_itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed ``iTXt`` chunk, no language tag, no translated keyword."""
    body = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
    return _png_chunk(b"iTXt", body)


def _png_text_keyword(data: bytes, kind: bytes, start: int, end: int) -> str | None:
    if kind not in (b"tEXt", b"iTXt", b"zTXt"):
        return None
    body = data[start + 8 : end - 4]
    return body.split(b"\x00", 1)[0].decode("latin-1")


def insert_png_chunks(data: bytes, chunks: Mapping[str, bytes]) -> bytes:
    """``data`` with the text ``chunks`` (keyword -> whole chunk bytes) just before the first IDAT, and every
    earlier text chunk of those keywords removed."""
    out = bytearray(PNG_SIGNATURE)
    inserted = False
    for kind, start, end in _png_chunks(data):
        if kind == b"IDAT" and not inserted:
            out += b"".join(chunks.values())
            inserted = True
        if _png_text_keyword(data, kind, start, end) not in chunks:
            out += data[start:end]
    if not inserted:
        raise ContainerError("PNG has no IDAT chunk")
    return bytes(out)


def extract_png_text(data: bytes, keyword: str) -> str | None:
    """The text of the first ``tEXt``, ``zTXt`` or ``iTXt`` chunk with ``keyword``, or None."""
    for kind, start, end in _png_chunks(data):
        if _png_text_keyword(data, kind, start, end) != keyword:
            continue
        body = data[start + 8 : end - 4][len(keyword) + 1 :]
        try:
            if kind == b"tEXt":
                return body.decode("latin-1")
            if kind == b"zTXt":  # compression method byte, then zlib
                return zlib.decompress(body[1:]).decode("latin-1")
            compressed = body[:1] == b"\x01"
            _, _, rest = body[2:].partition(b"\x00")  # language tag
            _, _, text = rest.partition(b"\x00")  # translated keyword
            return (zlib.decompress(text) if compressed else text).decode("utf-8", errors="replace")
        except zlib.error as error:
            raise ContainerError(
                f"PNG {kind.decode()} chunk {keyword!r} does not decompress: {error}"
            ) from None
    return None


# --- WebP ------------------------------------------------------------------------------------------------------


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(fourcc, payload)`` of each chunk of the RIFF (its padding dropped)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ContainerError("not a WebP: no RIFF WEBP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = 8 + riff_size
    if end > len(data) or riff_size < 4:
        raise ContainerError("truncated WebP: RIFF size exceeds the file")
    chunks, pos = [], 12
    while pos < end:
        if pos + 8 > end:
            raise ContainerError(f"truncated WebP chunk header at byte {pos}")
        fourcc, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > end:
            raise ContainerError(f"truncated WebP chunk {fourcc!r} at byte {pos}")
        chunks.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    if not chunks:
        raise ContainerError("WebP has no chunks")
    return chunks


def _webp_chunk(fourcc: bytes, payload: bytes) -> bytes:
    if len(payload) > _WEBP_CHUNK_MAX:
        raise PayloadTooLarge("WebP chunk", len(payload), _WEBP_CHUNK_MAX, f"{fourcc.decode().strip()} chunk")
    return fourcc + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)


def webp_canvas(fourcc: bytes, bitstream: bytes) -> tuple[int, int, bool]:
    """``(width, height, has_alpha)`` from a simple file's ``VP8 `` (key frame header, RFC 6386 9.1) or ``VP8L``
    (image header, WebP lossless spec 3) bitstream."""
    if fourcc == b"VP8 ":
        if len(bitstream) < 10 or bitstream[3:6] != b"\x9d\x01\x2a" or bitstream[0] & 1:
            raise ContainerError("WebP VP8 bitstream does not start with a key frame")
        width, height = struct.unpack("<HH", bitstream[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if fourcc == b"VP8L":
        if len(bitstream) < 5 or bitstream[0] != 0x2F:
            raise ContainerError("WebP VP8L bitstream has no lossless signature")
        (bits,) = struct.unpack("<I", bitstream[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    raise ContainerError(f"WebP simple format with unexpected first chunk {fourcc!r}")


def _vp8x_payload(flags: int, width: int, height: int) -> bytes:
    return bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def insert_webp_xmp(data: bytes, packet: bytes) -> bytes:
    """``data`` as an extended-format WebP with ``packet`` as its (only) XMP chunk."""
    chunks = _webp_chunks(data)
    first, payload = chunks[0]
    if first == b"VP8X":
        if len(payload) < 10:
            raise ContainerError("WebP VP8X chunk is shorter than 10 bytes")
        header = bytes([payload[0] | _WEBP_XMP_FLAG]) + payload[1:]
        rest = [c for c in chunks[1:] if c[0] != b"XMP "]
    else:
        width, height, alpha = webp_canvas(first, payload)
        header = _vp8x_payload(_WEBP_XMP_FLAG | (_WEBP_ALPHA_FLAG if alpha else 0), width, height)
        rest = [c for c in chunks if c[0] != b"XMP "]
    body = _webp_chunk(b"VP8X", header) + b"".join(_webp_chunk(k, p) for k, p in rest)
    body += _webp_chunk(b"XMP ", packet)
    if len(body) + 4 > 2**32 - 1:
        raise PayloadTooLarge("WebP RIFF", len(body) + 4, 2**32 - 1, "file")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def extract_webp_xmp(data: bytes) -> bytes | None:
    """The payload of the first ``XMP `` chunk, or None."""
    return next((payload for fourcc, payload in _webp_chunks(data) if fourcc == b"XMP "), None)
