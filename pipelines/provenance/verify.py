"""Verify the provenance marks of what a job wrote: one image file, one shard (parquet or webdataset tar) or a
whole job output, local or behind any fsspec URI.

    report = verify("s3://bucket/out", storage_options, trust_anchors=root_pem)
    report.ok, report.summary_line(), report.to_dict()

For every image written by a mode that generates one (the row's ``synthetic`` names ``image``):

- **marked**: its XMP says IPTC digital source type ``trainedAlgorithmicMedia``;
- **record**: its XMP generation record is the row's: key, mode, prompt (``prompt_used`` or ``prompt``), seed,
  model id, sampler settings (``params``), and, where the job's summary is known, the job's name and the
  checkpoint's version (``model_versions.checkpoint``);
- **pixels**: its pHash is the row's ``phash`` (within ``PHASH_TOLERANCE`` bits): replaced pixels are found
  even when the marks were copied over;
- **watermark** (when the job's spec asked for one): the payload of the job that wrote the unit
  (``watermark_payload`` of the unit marker's fingerprint) reads back;
- **C2PA**: the manifest's status (valid / untrusted / invalid / absent); when the job asked for manifests, an
  absent or invalid one is a problem, and so is an untrusted one when trust anchors are given; a manifest
  present must say ``trainedAlgorithmicMedia`` and hold the same record as the XMP.

An image the row says is an input (``i2t`` keeps the source file byte for byte) must carry no synthetic mark.
In a whole job output the copies of a record's image agree (``verify_copies``): its parquet and tar copies are
the same bytes, and no record is both written and rejected.
A lone image or a shard read without its job's summary is checked for what it carries, and the report says
what could not be checked (``not_checked``).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines import records as r
from pipelines.dedup.phash import hamming, phash
from pipelines.provenance.c2pa_manifest import ManifestCheck, verify_manifest
from pipelines.provenance.verify_copies import ImageCopies
from pipelines.provenance.verify_targets import (
    ImageItem,
    JobContext,
    TargetKind,
    VerifyTargetError,
    job_context,
    job_shards,
    open_target,
    read_image_file,
    relative,
    shard_images,
    shard_job_root,
    target_kind,
)
from pipelines.provenance.watermark import (
    DETECTION_THRESHOLD,
    WatermarkError,
    watermark_match,
    watermark_payload,
)
from unidiffuser.config import Mode
from unidiffuser.locations import redact
from unidiffuser.marks.marking import ImageMarks, read_marks
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA

PHASH_TOLERANCE = 4
"""Bits in which an image's pHash may differ from its row's (a re-decode by another Pillow); replaced pixels
differ in far more."""
MAX_PROBLEMS_SHOWN = 20

Outcome = Literal["ok", "problem", "not checked", "not asked"]
C2paStatus = Literal["valid", "untrusted", "invalid", "absent", "not checked"]
# row params name -> record field
_PARAMS = {"steps": "steps", "guidance_scale": "guidance_scale", "t2i_cfg_mode": "cfg_mode",
           "data_type": "data_type", "dtype": "dtype"}  # fmt: skip

__all__ = ["ImageCheck", "VerifyReport", "VerifyTargetError", "check_image", "verify"]


@dataclass(frozen=True)
class ImageCheck:
    """What was found in one image; ``problems`` name the record key."""

    key: str | None
    source: str  # the file holding it
    generated: bool  # the row (or, for a lone file, its marks) says the model made it
    marked: bool  # XMP digital source type trainedAlgorithmicMedia
    record: Outcome  # the XMP generation record against the row
    pixels: Outcome  # pHash against the row's
    watermark: Outcome
    watermark_match: float | None  # fraction of the payload's bits read back
    c2pa: C2paStatus
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class VerifyReport:
    """Every image checked in a target, what could not be checked, and the target's own problems."""

    target: str
    kind: TargetKind
    job_known: bool  # the job's summary was read: what it asked for is known
    watermark_asked: bool | None
    c2pa_asked: bool | None
    trust_anchors: bool
    images: tuple[ImageCheck, ...]
    not_checked: tuple[str, ...] = ()
    target_problems: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        """The target's problems, then every image's."""
        return [*self.target_problems, *(p for image in self.images for p in image.problems)]

    @property
    def ok(self) -> bool:
        """True only when every mark the job asked for (or, without its spec, every mark found) checks."""
        return not self.target_problems and all(image.ok for image in self.images)

    def totals(self) -> dict[str, Any]:
        """Counts over the images: generated, inputs, marked, records / pixels matching, watermark, C2PA."""
        generated = [i for i in self.images if i.generated]
        return {
            "images": len(self.images),
            "generated": len(generated),
            "inputs": len(self.images) - len(generated),
            "marked": sum(i.marked for i in generated),
            "records_match": sum(i.record == "ok" for i in generated),
            "pixels_match": sum(i.pixels == "ok" for i in self.images),
            "watermark_found": sum(i.watermark == "ok" for i in generated),
            "watermark_checked": sum(i.watermark in ("ok", "problem") for i in generated),
            "c2pa": dict(Counter(i.c2pa for i in generated)),
            "problems": len(self.problems),
        }

    def summary_line(self) -> str:
        """``verify: 12 images, 12 marked, 12 records match, ...: OK`` (or ``: N problems``)."""
        t = self.totals()
        inputs = f" ({t['inputs']} inputs, not generated)" if t["inputs"] else ""
        parts = [
            f"{t['images']} images{inputs}",
            f"{t['marked']} marked",
            f"{t['records_match']} records match",
            f"{t['pixels_match']} pixels match",
            self._watermark_part(t),
            self._c2pa_part(t),
        ]
        verdict = "OK" if self.ok else f"{t['problems']} problems"
        return f"verify: {', '.join(parts)}: {verdict}"

    def _watermark_part(self, t: Mapping[str, Any]) -> str:
        if self.watermark_asked is None:
            return "watermark not checked (job spec unknown)"
        if not self.watermark_asked:
            return "watermark not asked for"
        return f"watermark {t['watermark_found']}/{t['generated']}"

    def _c2pa_part(self, t: Mapping[str, Any]) -> str:
        statuses: dict[str, int] = t["c2pa"]
        counts = (
            "absent"
            if set(statuses) <= {"absent"}
            else ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        )
        if self.c2pa_asked is None:
            return f"c2pa {counts} (job spec unknown)"
        if not self.c2pa_asked:
            return f"c2pa {counts} (not asked for)"
        return f"c2pa {counts}" + ("" if self.trust_anchors else " (no trust anchors given)")

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready values (``ok`` and ``totals`` included)."""
        return {"ok": self.ok, "totals": self.totals(), **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def verify(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    trust_anchors: bytes | None = None,
) -> VerifyReport:
    """Verify the image, shard or job output at ``uri`` (local path or fsspec URI). ``trust_anchors``: PEM root
    certificates C2PA manifests must chain to. VerifyTargetError (one line) when the target cannot be read."""
    fs, path = open_target(uri, storage_options)
    kind = target_kind(uri, fs, path)
    root = path.rstrip("/") if kind == "job" else shard_job_root(path) if kind == "shard" else None
    job = job_context(fs, root) if root is not None else None
    not_checked = _not_checked(kind, job)
    target_problems: list[str] = []
    if kind == "image":
        items: Iterable[ImageItem] = [ImageItem(read_image_file(fs, path, uri), posixpath_name(path), None)]
    elif kind == "shard":
        if not fs.exists(path):
            raise VerifyTargetError(f"{redact(uri)} does not exist")
        items = shard_images(fs, path, relative(path, root) if job else posixpath_name(path))
    else:
        shards = job_shards(fs, path)
        if not shards:
            target_problems.append(f"{redact(uri)}: no shards (parquet/, rejected/, webdataset/) to verify")
        items = (item for shard in shards for item in shard_images(fs, shard, relative(shard, path)))
    context = job or JobContext()
    copies = ImageCopies() if kind == "job" else None  # a record's copies are compared across a whole job
    checks = []
    for item in items:
        checks.append(check_image(item, context, trust_anchors=trust_anchors))
        if copies is not None:
            copies.add(item)
    if copies is not None:
        target_problems += copies.finish()
    images = tuple(checks)
    return VerifyReport(
        target=redact(uri),
        kind=kind,
        job_known=job is not None,
        watermark_asked=context.watermark,
        c2pa_asked=context.c2pa,
        trust_anchors=trust_anchors is not None,
        images=images,
        not_checked=not_checked,
        target_problems=tuple(target_problems),
    )


def posixpath_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _not_checked(kind: TargetKind, job: JobContext | None) -> tuple[str, ...]:
    lacking = "a lone image" if kind == "image" else "no job summary found"
    notes: list[str] = []
    if kind == "image":
        notes.append(f"record against its row, pixels against its pHash ({lacking}: the marks are only read)")
    if job is None:
        notes += [
            f"job name and model version ({lacking})",
            f"watermark ({lacking}: its payload and whether the job asked for one are unknown)",
            f"whether the job asked for C2PA manifests ({lacking}: manifests found are validated)",
        ]
    return tuple(notes)


def check_image(item: ImageItem, job: JobContext, *, trust_anchors: bytes | None = None) -> ImageCheck:
    """The checks of one image against its row (``item.row``; None for a lone file) and the job's context."""
    problems: list[str] = []
    try:
        marks = read_marks(item.data)
    except ValueError as error:
        marks = None
        problems.append(f"its XMP cannot be read: {error}")
    row = item.row
    key = str(row[r.KEY]) if row is not None else (marks.record.key if marks and marks.record else None)
    generated = _generated(row)
    marked = marks is not None and marks.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    pixels, decoded = _pixels(item.data, row, problems)
    if not generated:
        if marked:
            problems.append("an input image (not generated) is marked as trainedAlgorithmicMedia")
        manifest = _manifest(item.data, trust_anchors)
        if manifest.digital_source_type == TRAINED_ALGORITHMIC_MEDIA:
            problems.append(
                "an input image (not generated) has a C2PA manifest saying trainedAlgorithmicMedia"
            )
        return ImageCheck(key, item.source, False, marked, "not asked", pixels, "not asked", None,
                          manifest.status, _named(item, key, problems))  # fmt: skip
    if not marked:
        problems.append(
            "not marked as AI-generated (no XMP digital source type trainedAlgorithmicMedia)"
            if marks is None or marks.digital_source_type is None
            else f"XMP digital source type is {marks.digital_source_type!r}, not trainedAlgorithmicMedia"
        )
    record = _record(marks, row, job, problems)
    watermark, match = _watermark(decoded, item, job, problems)
    c2pa = _c2pa(item.data, marks, job, trust_anchors, problems)
    return ImageCheck(key, item.source, True, marked, record, pixels, watermark, match, c2pa,
                      _named(item, key, problems))  # fmt: skip


def _named(item: ImageItem, key: str | None, problems: list[str]) -> tuple[str, ...]:
    where = f"{item.source} record {key!r}" if key is not None else item.source
    return tuple(f"{where}: {p}" for p in problems)


def _generated(row: Mapping[str, Any] | None) -> bool:
    """Whether the model made the image: the row's ``synthetic`` (else its mode). A lone file is checked as a
    generated image: only its row can say that an image is an input (an unmarked file is a problem)."""
    if row is None:
        return True
    synthetic = row.get(r.SYNTHETIC)
    if synthetic is not None:
        return "image" in list(synthetic)
    try:
        return Mode(row.get(r.MODE) or Mode.T2I.value).makes_image
    except ValueError:
        return True  # an unknown mode: check every mark


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _pixels(
    data: bytes, row: Mapping[str, Any] | None, problems: list[str]
) -> tuple[Outcome, np.ndarray | None]:
    try:
        decoded = _decode(data)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        problems.append(f"the image cannot be decoded: {error}")
        return "problem", None
    expected = None if row is None else row.get(r.PHASH)
    if row is None:
        return "not checked", decoded
    if not expected:
        problems.append("its row has no phash to check the pixels against")
        return "problem", decoded
    try:
        distance = hamming(phash(decoded), str(expected))
    except ValueError as error:
        problems.append(f"pixels cannot be checked: {error}")
        return "problem", decoded
    if distance > PHASH_TOLERANCE:
        problems.append(
            f"the pixels are not those its row describes: pHash differs from the row's {expected} in "
            f"{distance} bits (tolerance {PHASH_TOLERANCE})"
        )
        return "problem", decoded
    return "ok", decoded


def _record(
    marks: ImageMarks | None, row: Mapping[str, Any] | None, job: JobContext, problems: list[str]
) -> Outcome:
    if marks is None or marks.record is None:
        problems.append("no XMP generation record")
        return "problem"
    differences = record_differences(marks.record, row, job)
    if differences:
        problems.append("the generation record differs from its row: " + "; ".join(differences))
        return "problem"
    return "ok" if row is not None else "not checked"


def record_differences(record: GenerationRecord, row: Mapping[str, Any] | None, job: JobContext) -> list[str]:
    """``field: record has X, row has Y`` for each field of ``record`` that its row (and the job) contradict."""
    expected: dict[str, Any] = {"job": job.name, "model_version": job.model_version}
    if row is not None:
        expected |= {
            "key": row.get(r.KEY),
            "mode": row.get(r.MODE),
            "prompt": row.get(r.PROMPT_USED) or row.get(r.PROMPT) or None,
            "seed": row.get(r.SEED),
            "model_id": row.get(r.MODEL_ID),
            **_params_fields(row.get(r.PARAMS)),
        }
        if expected["prompt"] is None:
            expected["prompt"] = _Absent()
    found = record.to_dict()
    return [
        f"{name}: record has {found[name]!r}, {'row' if name not in ('job', 'model_version') else 'job'} has "
        f"{None if isinstance(value, _Absent) else value!r}"
        for name, value in expected.items()
        if value is not None and not _same(found[name], value)
    ]


class _Absent:
    """An expected value of None that must be checked (a row with no prompt: the record must have none)."""


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, _Absent):
        return found is None
    if isinstance(found, float) or isinstance(expected, float):
        try:
            return float(found) == float(expected)
        except (TypeError, ValueError):
            return False
    return bool(found == expected)


def _params_fields(params: Any) -> dict[str, Any]:
    """The record fields the row's ``params`` (JSON text, or an object in a tar's .json) give."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            return {}
    if not isinstance(params, Mapping):
        return {}
    return {field: params[name] for name, field in _PARAMS.items() if name in params}


def _watermark(
    decoded: np.ndarray | None, item: ImageItem, job: JobContext, problems: list[str]
) -> tuple[Outcome, float | None]:
    if job.watermark is None:
        return "not checked", None
    if not job.watermark:
        return "not asked", None
    fingerprint = job.fingerprint_of(item.unit)
    if fingerprint is None:
        problems.append("watermark asked for, but the job's fingerprint (its payload) is unknown")
        return "problem", None
    if decoded is None:
        return "problem", None
    try:
        match = watermark_match(decoded, watermark_payload(fingerprint), job.watermark_method)  # type: ignore[arg-type]
    except WatermarkError as error:
        problems.append(f"watermark asked for, but it cannot be read: {error}")
        return "problem", None
    if match < DETECTION_THRESHOLD:
        problems.append(
            f"watermark asked for, but the job's payload does not read back ({match:.0%} of its bits, "
            f"{DETECTION_THRESHOLD:.0%} needed)"
        )
        return "problem", match
    return "ok", match


def _manifest(data: bytes, trust_anchors: bytes | None) -> ManifestCheck:
    return verify_manifest(data, trust_anchors=trust_anchors)


def _c2pa(
    data: bytes,
    marks: ImageMarks | None,
    job: JobContext,
    trust_anchors: bytes | None,
    problems: list[str],
) -> C2paStatus:
    check = _manifest(data, trust_anchors)
    if check.status == "absent":
        if job.c2pa:
            problems.append("C2PA manifest asked for, but absent")
        return "absent"
    if check.status == "invalid":
        problems.append(f"C2PA manifest is invalid ({', '.join(check.failures) or check.validation_state})")
    elif check.status == "untrusted" and trust_anchors is not None:
        problems.append("C2PA manifest does not chain to the trust anchors given")
    if check.digital_source_type != TRAINED_ALGORITHMIC_MEDIA:
        problems.append(f"C2PA manifest's digital source type is {check.digital_source_type!r}")
    xmp_record = None if marks is None else marks.record
    if check.record is None:
        problems.append("C2PA manifest holds no generation record")
    elif xmp_record is not None and check.record != xmp_record:
        problems.append("C2PA manifest's generation record differs from the XMP's")
    return check.status
