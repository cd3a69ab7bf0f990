"""The XMP packet of a generated image: the IPTC digital source type that says a trained model made it, and the
generation record under the project's own namespace.

``xmp_packet(record)`` writes the packet (the same bytes for the same record); ``parse_xmp(packet)`` reads the
source type and the record back from it, and from any XMP packet a reader may have rewritten (properties as
attributes or elements, ``rdf:resource`` URIs, several ``rdf:Description`` nodes).

Every record field is one simple property ``udb:<Name>`` (``https://unidiffuser-batch.dev/ns/1.0/``); exiftool
shows them as group ``XMP-udb``. Text round-trips exactly, line breaks and any Unicode included, except the
characters XML 1.0 cannot carry at all (C0 controls other than tab, LF and CR; lone surrogates; U+FFFE and
U+FFFF), which are written as U+FFFD.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from unidiffuser.marks.record import GenerationRecord

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
UDB_NAMESPACE = "https://unidiffuser-batch.dev/ns/1.0/"
IPTC_EXT_NAMESPACE = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NAMESPACE = "http://ns.adobe.com/xap/1.0/"
RDF_NAMESPACE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

# record field -> udb property name, in the order written
_PROPERTIES = {
    "software": "Software",
    "software_version": "SoftwareVersion",
    "model_id": "ModelId",
    "model_version": "ModelVersion",
    "mode": "Mode",
    "prompt": "Prompt",
    "seed": "Seed",
    "steps": "Steps",
    "guidance_scale": "GuidanceScale",
    "cfg_mode": "CfgMode",
    "data_type": "DataType",
    "dtype": "Dtype",
    "job": "Job",
    "key": "RecordKey",
}
_NUMBERS = {"seed": int, "steps": int, "data_type": int, "guidance_scale": float}
# what XML 1.0 (Char production) cannot hold even as a character reference
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def xml_safe(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _text(value: str) -> str:
    # CR as a reference: a parser turns a literal CR (or CR LF) into LF
    return xml_safe(value).translate(_ESCAPES)


def xmp_packet(record: GenerationRecord) -> bytes:
    """A complete UTF-8 XMP packet (``<?xpacket?>``-wrapped ``x:xmpmeta``/``rdf:RDF``) for ``record``."""
    lines = [
        f"   <Iptc4xmpExt:DigitalSourceType>{TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>",
        f"   <xmp:CreatorTool>{_text(f'{record.software} {record.software_version}')}</xmp:CreatorTool>",
    ]
    for field, name in _PROPERTIES.items():
        value = getattr(record, field)
        if value is not None:
            lines.append(
                f"   <udb:{name}>{_text(repr(value) if isinstance(value, float) else str(value))}</udb:{name}>"
            )
    body = "\n".join(lines)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NAMESPACE}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NAMESPACE}"\n'
        f'    xmlns:xmp="{XMP_NAMESPACE}"\n'
        f'    xmlns:udb="{UDB_NAMESPACE}">\n'
        f"{body}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode()


@dataclass(frozen=True)
class XmpContent:
    """What ``parse_xmp`` found: the digital source type and our record, each None when absent or incomplete."""

    digital_source_type: str | None
    record: GenerationRecord | None


def _simple_properties(root: ET.Element) -> dict[str, str]:
    """``{namespace}name`` -> value of every simple property of every ``rdf:Description``."""
    found: dict[str, str] = {}
    for description in root.iter(f"{{{RDF_NAMESPACE}}}Description"):
        for name, value in description.attrib.items():
            if not name.startswith(f"{{{RDF_NAMESPACE}}}"):
                found.setdefault(name, value)
        for child in description:
            resource = child.get(f"{{{RDF_NAMESPACE}}}resource")
            if resource is not None:
                found.setdefault(child.tag, resource)
            elif len(child) == 0:
                found.setdefault(child.tag, child.text or "")
    return found


def _record(properties: dict[str, str]) -> GenerationRecord | None:
    values: dict[str, object] = {}
    for field, name in _PROPERTIES.items():
        text = properties.get(f"{{{UDB_NAMESPACE}}}{name}")
        if text is None:
            if field != "prompt":
                return None
            continue
        try:
            values[field] = _NUMBERS[field](text) if field in _NUMBERS else text
        except ValueError:
            return None
    try:
        return GenerationRecord.from_dict(values)
    except ValueError:
        return None


def parse_xmp(packet: bytes) -> XmpContent:
    """The digital source type and generation record in ``packet``; ValueError if it is not XML."""
    try:
        root = ET.fromstring(packet)
    except ET.ParseError as error:
        raise ValueError(f"XMP packet is not well-formed XML: {error}") from None
    properties = _simple_properties(root)
    return XmpContent(properties.get(f"{{{IPTC_EXT_NAMESPACE}}}DigitalSourceType"), _record(properties))
