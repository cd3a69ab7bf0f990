"""XMP marking of encoded JPEG, PNG and WebP bytes: read back by our reader, by Pillow and by exiftool; pixels
unchanged; limits and bad bytes reported per record."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unidiffuser.marks.containers import JPEG_XMP_PACKET_MAX
from unidiffuser.marks.marking import MarkingError, mark_image, read_marks
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA, UDB_NAMESPACE, parse_xmp, xmp_packet

requires_exiftool = pytest.mark.skipif(
    shutil.which("exiftool") is None,
    reason="exiftool not on PATH (apt-get install -y libimage-exiftool-perl)",
)


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1  # Orientation
    exif[0x0131] = "a camera app"  # Software
    return exif.tobytes()


# (name, file extension, Pillow format, save options, image mode)
VARIANTS = [
    ("jpeg", "jpg", "JPEG", {"quality": 90}, "RGB"),
    ("jpeg-exif", "jpg", "JPEG", {"exif": _exif()}, "RGB"),
    ("png", "png", "PNG", {}, "RGB"),
    ("png-palette", "png", "PNG", {}, "P"),
    ("webp-lossy", "webp", "WEBP", {"quality": 80}, "RGB"),
    ("webp-lossless", "webp", "WEBP", {"lossless": True}, "RGB"),
    ("webp-lossless-alpha", "webp", "WEBP", {"lossless": True}, "RGBA"),
    ("webp-lossy-alpha", "webp", "WEBP", {"quality": 80}, "RGBA"),  # Pillow writes VP8X + ALPH
]


def _source(photo: np.ndarray, pil_format: str, options: dict, mode: str) -> bytes:
    image = Image.fromarray(photo[:71, :95])  # odd sizes: canvas fields and chunk padding
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.linspace(0, 255, 71 * 95).reshape(71, 95).astype(np.uint8)))
    elif mode == "P":
        image = image.quantize(64)
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def variant(request: pytest.FixtureRequest, photo: np.ndarray) -> tuple[str, bytes]:
    _, ext, pil_format, options, mode = request.param
    return ext, _source(photo, pil_format, options, mode)


def _exiftool(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-a", *args, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)[0]


# --- the packet ------------------------------------------------------------------------------------------------


def test_packet_is_deterministic_well_formed_xmp(record: GenerationRecord) -> None:
    packet = xmp_packet(record)
    assert packet == xmp_packet(dataclasses.replace(record))
    assert packet.startswith(b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>')
    assert packet.endswith(b'<?xpacket end="w"?>')
    root = ET.fromstring(packet)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    description = root.find("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}RDF/")
    assert description is not None
    source = description.find("{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType")
    assert source is not None and source.text == TRAINED_ALGORITHMIC_MEDIA
    assert description.find(f"{{{UDB_NAMESPACE}}}RecordKey").text == record.key  # type: ignore[union-attr]
    assert packet != xmp_packet(dataclasses.replace(record, seed=record.seed + 1))


def test_packet_round_trips_any_unicode_prompt(record: GenerationRecord) -> None:
    for prompt in (
        "<b>&amp;</b> ]]> \"'",
        "日本語のプロンプト 🐱‍👤 עברית",
        "a\r\nb\rc\n\td  ",
        "",
        "\u2028\u00a0",
    ):
        value = dataclasses.replace(record, prompt=prompt)
        assert parse_xmp(xmp_packet(value)).record == value


def test_characters_xml_cannot_carry_become_replacement_characters(record: GenerationRecord) -> None:
    value = dataclasses.replace(record, prompt="bell\x07 nul\x00 lone\ud800 end\uffff")
    assert parse_xmp(xmp_packet(value)).record == dataclasses.replace(
        record, prompt="bell\ufffd nul\ufffd lone\ufffd end\ufffd"
    )


def test_parse_reads_attribute_and_resource_forms(record: GenerationRecord) -> None:
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{TRAINED_ALGORITHMIC_MEDIA}"/></rdf:Description>'
        f'<rdf:Description rdf:about="" xmlns:udb="{UDB_NAMESPACE}" udb:Software="unidiffuser-batch" '
        'udb:SoftwareVersion="0.1.0" udb:ModelId="m" udb:ModelVersion="v" udb:Mode="image" udb:Seed="3" '
        'udb:Steps="10" udb:GuidanceScale="1" udb:CfgMode="empty_token" udb:DataType="0" udb:Dtype="bfloat16" '
        'udb:Job="j" udb:RecordKey="k"/></rdf:RDF></x:xmpmeta>'
    ).encode()
    content = parse_xmp(packet)
    assert content.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert content.record == dataclasses.replace(
        record, model_id="m", model_version="v", mode="image", prompt=None, seed=3, steps=10,
        guidance_scale=1.0, cfg_mode="empty_token", data_type=0, dtype="bfloat16", job="j", key="k",
    )  # fmt: skip


def test_foreign_or_incomplete_xmp_has_no_record() -> None:
    foreign = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
    assert parse_xmp(foreign).record is None and parse_xmp(foreign).digital_source_type is None
    with pytest.raises(ValueError, match="not well-formed"):
        parse_xmp(b"<x:xmpmeta>")


# --- marking each format ---------------------------------------------------------------------------------------


def test_marking_leaves_pixels_bit_identical(
    variant: tuple[str, bytes], record: GenerationRecord, pil_decode: Callable[[bytes], np.ndarray]
) -> None:
    ext, data = variant
    marked = mark_image(data, ext, record)
    assert marked != data
    before, after = pil_decode(data), pil_decode(marked)
    assert before.shape == after.shape and np.array_equal(before, after)


def test_our_reader_and_pillow_find_the_marks(variant: tuple[str, bytes], record: GenerationRecord) -> None:
    ext, data = variant
    marked = mark_image(data, ext, record)
    marks = read_marks(marked)
    assert marks is not None and marks.format == ext
    assert marks.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert marks.record == record
    assert marks.parameters == (record.parameters_text() if ext == "png" else None)
    with Image.open(io.BytesIO(marked)) as image:
        image.load()
        xmp = image.info["xmp"]
        assert (xmp.encode() if isinstance(xmp, str) else xmp) == xmp_packet(record)
        if ext == "png":
            assert image.info["parameters"] == record.parameters_text()


@requires_exiftool
def test_exiftool_reads_the_marks(
    variant: tuple[str, bytes], record: GenerationRecord, tmp_path: Path
) -> None:
    ext, data = variant
    path = tmp_path / f"marked.{ext}"
    path.write_bytes(mark_image(data, ext, record))
    tags = _exiftool(path)
    assert tags["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert tags["XMP-xmp:CreatorTool"] == "unidiffuser-batch 0.1.0"
    assert tags["XMP-udb:Prompt"] == record.prompt
    assert tags["XMP-udb:RecordKey"] == record.key
    assert tags["XMP-udb:Seed"] == record.seed
    assert tags["XMP-udb:ModelVersion"] == record.model_version
    if ext == "png":
        assert tags["PNG:Parameters"] == record.parameters_text()
    if ext == "webp":
        assert "XMP" in tags["RIFF:WebP_Flags"]
        assert (tags["RIFF:ImageWidth"], tags["RIFF:ImageHeight"]) == (95, 71)
    # marking adds no structural problem: exiftool's validation says of the marked file what it says of the source
    source = tmp_path / f"source.{ext}"
    source.write_bytes(data)
    validation = _exiftool(path, "-validate", "-warning", "-error")
    assert validation["ExifTool:Validate"] == _exiftool(source, "-validate")["ExifTool:Validate"], validation
    assert validation["ExifTool:Validate"] == "OK" or ext == "jpg"  # the Exif variant's minimal IFD0 warns


@requires_exiftool
def test_exiftool_keeps_unicode_prompts_exact(
    record: GenerationRecord, photo: np.ndarray, tmp_path: Path
) -> None:
    value = dataclasses.replace(record, prompt='日本語 🐱 <&> "q"\nsecond line')
    for ext, pil_format in (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        path = tmp_path / f"unicode.{ext}"
        path.write_bytes(mark_image(_source(photo, pil_format, {}, "RGB"), ext, value))
        assert _exiftool(path)["XMP-udb:Prompt"] == value.prompt


@requires_exiftool
def test_our_reader_reads_what_exiftool_rewrote(
    record: GenerationRecord, photo: np.ndarray, tmp_path: Path
) -> None:
    for ext, pil_format in (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        path = tmp_path / f"rewritten.{ext}"
        path.write_bytes(mark_image(_source(photo, pil_format, {}, "RGB"), ext, record))
        subprocess.run(
            ["exiftool", "-q", "-overwrite_original", "-XMP-dc:Title=edited", str(path)], check=True
        )
        rewritten = path.read_bytes()
        assert b"edited" in rewritten
        marks = read_marks(rewritten)
        assert marks is not None and marks.record == record
        assert marks.digital_source_type == TRAINED_ALGORITHMIC_MEDIA


def test_marking_twice_keeps_one_packet(variant: tuple[str, bytes], record: GenerationRecord) -> None:
    ext, data = variant
    later = dataclasses.replace(record, seed=99)
    twice = mark_image(mark_image(data, ext, record), ext, later)
    assert twice.count(b"<x:xmpmeta") == 1
    assert twice.count(b"parameters\x00") == (1 if ext == "png" else 0)
    assert read_marks(twice).record == later  # type: ignore[union-attr]
    assert len(twice) == len(mark_image(data, ext, later))


def test_simple_webp_becomes_extended_with_the_canvas_of_the_bitstream(
    photo: np.ndarray, record: GenerationRecord
) -> None:
    for options, alpha_flag in (({"lossless": True}, 0x10), ({"quality": 80}, 0x10)):
        marked = mark_image(_source(photo, "WEBP", options, "RGBA"), "webp", record)
        assert marked[12:16] == b"VP8X"
        flags, width, height = (
            marked[20],
            int.from_bytes(marked[24:27], "little"),
            int.from_bytes(marked[27:30], "little"),
        )
        assert (width + 1, height + 1) == (95, 71)
        assert flags & 0x04 and flags & alpha_flag
    simple = _source(photo, "WEBP", {}, "RGB")
    assert simple[12:16] == b"VP8 "
    marked = mark_image(simple, "webp", record)
    assert marked[20] == 0x04  # XMP only: no alpha in a plain VP8 file
    assert struct.unpack("<I", marked[4:8])[0] == len(marked) - 8


def test_jpeg_segment_order_keeps_jfif_and_exif_first(photo: np.ndarray, record: GenerationRecord) -> None:
    data = _source(photo, "JPEG", dict(VARIANTS[1][3]), "RGB")
    marked = mark_image(data, "jpg", record)
    assert marked[2:4] == b"\xff\xe0"  # JFIF APP0 right after SOI
    exif_at, xmp_at = marked.index(b"Exif\x00\x00"), marked.index(b"http://ns.adobe.com/xap/1.0/\x00")
    assert exif_at < xmp_at < marked.index(b"\xff\xda")


# --- limits and bad input --------------------------------------------------------------------------------------


def test_a_record_too_big_for_jpeg_is_a_marking_error(photo: np.ndarray, record: GenerationRecord) -> None:
    huge = dataclasses.replace(record, prompt="word " * 14000)
    with pytest.raises(MarkingError) as caught:
        mark_image(_source(photo, "JPEG", {}, "RGB"), "jpg", huge)
    message = str(caught.value)
    assert "prompts-000003_0" in message and "65533" in message
    assert caught.value.key == huge.key
    assert caught.value.size == len(xmp_packet(huge)) + 29 > 65533
    # PNG and WebP chunks hold it
    for ext, pil_format in (("png", "PNG"), ("webp", "WEBP")):
        assert read_marks(mark_image(_source(photo, pil_format, {}, "RGB"), ext, huge)).record == huge  # type: ignore[union-attr]


def test_the_jpeg_limit_is_exact(photo: np.ndarray, record: GenerationRecord) -> None:
    data = _source(photo, "JPEG", {}, "RGB")
    base = len(xmp_packet(dataclasses.replace(record, prompt="")))
    fits = dataclasses.replace(record, prompt="x" * (JPEG_XMP_PACKET_MAX - base))
    assert len(xmp_packet(fits)) == JPEG_XMP_PACKET_MAX
    assert read_marks(mark_image(data, "jpg", fits)).record == fits  # type: ignore[union-attr]
    with pytest.raises(MarkingError, match="65534 bytes exceeds"):
        mark_image(data, "jpg", dataclasses.replace(fits, prompt=fits.prompt + "x"))  # type: ignore[operator]


def test_bad_bytes_are_marking_errors_naming_the_record(photo: np.ndarray, record: GenerationRecord) -> None:
    png = _source(photo, "PNG", {}, "RGB")
    cases = {
        "jpg": (png, "not a jpg file"),
        "png": (png[: len(png) // 2], "truncated PNG"),
        "webp": (b"RIFF\xff\xff\x00\x00WEBPVP8 ", "truncated WebP"),
    }
    broken_crc = bytearray(png)
    broken_crc[40] ^= 0xFF
    for ext, (data, reason) in [*cases.items(), ("png", (bytes(broken_crc), "CRC"))]:
        with pytest.raises(MarkingError, match=reason) as caught:
            mark_image(data, ext, record)
        assert "prompts-000003_0" in str(caught.value)
    with pytest.raises(ValueError, match="unsupported image format 'gif'"):
        mark_image(png, "gif", record)


def test_unmarked_and_unknown_bytes_have_no_marks(photo: np.ndarray) -> None:
    for pil_format in ("JPEG", "PNG", "WEBP"):
        assert read_marks(_source(photo, pil_format, {}, "RGB")) is None
    assert read_marks(b"GIF89a....") is None
    assert read_marks(b"") is None
