"""Regenerate one record of a finished job from what its row, its image's marks and the job's summary say, and
compare it with what the job wrote: the proof that a record's provenance is complete.

    result = regenerate("s3://bucket/out", "prompts-000003_0", device="cpu")
    result.equal, result.describe()  # 'regenerate prompts-000003_0: bitwise equal (t2i, seed 123, 64x64)'

What the record is rebuilt from: the row's mode, seed and prompt; its ``params`` (the job's sampling settings;
where a row has none, as rejected rows written before they kept them, the summary's ``config.model`` serves);
the checkpoint at the spec's location (or the one ``checkpoint`` names), which must have the identity the record
was made with (its marks' ``model_version``, else the summary's ``model_versions.checkpoint``); the job's image
encoding and watermark.
The engine runs that one record alone (``batch_size`` 1): its noise comes from its own seed (``RecordNoise``),
so alone it must equal what the job made in a batch. The marks are checked against the row and the summary, and
a disagreement makes the record not equal even when the pixels match.

What each record starts from:

- t2i and t2i2t: the prompt in the row; joint, image and text: a seed is all they start from;
- i2t, when the job kept each input image (``output.caption_image: source``, the default) or the model input
  losslessly (``model_input`` with PNG output): the image in the row;
- i2t2i records, and i2t records written with ``caption_image: none`` or a lossy model input, keep no input
  image: it is read again from the job's input corpus (``input_image``), which must still be what the job read
  (the unit's input hash), else ``CannotRegenerate`` says the corpus changed; or from a copy of the corpus
  elsewhere (``input_uri``), checked only by the comparison.

An errored record has no output, nor has a record rejected before generation (blocklist, exact duplicate).

Tolerance: a job that ran on CPU in float32, regenerated on CPU, is reproduced bitwise: the decoded images are
equal in every pixel and the captions are equal. On CPU the result also depends on torch's number of intra-op
threads (a matrix product splits its sums by thread): the engine actors set it to
``resources.engine_threads`` (``floor(cpus_per_actor)``, at least 1) and the summary records it
(``engine_threads``), so that is what regenerate uses unless told otherwise (``threads``; a summary written
before it was recorded falls back to the same formula).
Bitwise also assumes the same CPU kind (oneDNN / MKL pick kernels by instruction set). Anything else (a GPU on either side, a float16 / bfloat16 job)
is equal within ``PIXEL_TOLERANCE``: every channel of every decoded pixel within 2 levels (of 255), and the
captions equal. That bound is stated, not measured: kernels differ between devices, and the difference grows
with the number of sampling steps.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from pipelines import records as r
from pipelines.config import ModelSpec, OutputSpec, ResourcesSpec
from pipelines.provenance.input_image import InputImageError, read_input_image
from pipelines.provenance.spec import ProvenanceSpec
from pipelines.provenance.stored_record import StoredRecord, find_record
from pipelines.provenance.watermark import WatermarkError, embed_watermark, watermark_payload
from pipelines.writers.encode import image_format
from pipelines.writers.shard_image import CaptionImage, shard_image
from unidiffuser.checkpoint import CheckpointError, checkpoint_identity
from unidiffuser.config import EngineConfig, EngineConfigError, Mode, ModeInput
from unidiffuser.engine import UniDiffuserEngine
from unidiffuser.inputs import InputError, prepare_image
from unidiffuser.locations import describe_error, redact

PIXEL_TOLERANCE = 2
"""Largest difference (of 255) allowed in any channel of any decoded pixel when bitwise equality is not expected."""


class CannotRegenerate(ValueError):
    """The record cannot be regenerated (errored, never generated, input not kept, wrong checkpoint, ...): the
    message names the record and says why."""


@dataclass(frozen=True)
class Regeneration:
    """A record regenerated and compared with what its job wrote."""

    key: str
    outcome: str  # where the job put it: "written" or "rejected"
    mode: str
    seed: int
    device: str  # where it was regenerated
    threads: int  # torch's intra-op threads it was regenerated with
    tolerance: int  # largest pixel difference that still counts as equal (0: bitwise)
    width: int | None  # of the regenerated image (None: the mode makes none)
    height: int | None
    max_abs_diff: int | None  # largest channel difference of the decoded images (None: no image compared)
    differing_pixels: int | None  # pixels with any channel different
    caption: str | None  # the generated caption the job wrote (None: the mode makes none)
    regenerated_caption: str | None
    disagreements: tuple[str, ...] = ()  # where the row, its marks and the summary contradict each other
    image: bytes | None = field(default=None, repr=False, compare=False)  # regenerated, encoded as written

    @property
    def image_equal(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= self.tolerance

    @property
    def caption_equal(self) -> bool:
        return self.caption == self.regenerated_caption

    @property
    def equal(self) -> bool:
        """Reproduced (bitwise, or within the tolerance), and its provenance consistent."""
        return self.image_equal and self.caption_equal and not self.disagreements

    @property
    def bitwise(self) -> bool:
        return self.equal and not self.max_abs_diff

    def describe(self) -> str:
        """One line: ``regenerate KEY: bitwise equal (t2i, seed 123, 64x64)``, or what differs."""
        what = ", ".join(
            [self.mode]
            + ([self.outcome] if self.outcome != "written" else [])
            + [f"seed {self.seed}"]
            + ([f"{self.width}x{self.height}"] if self.width is not None else [])
        )
        if self.bitwise:
            return f"regenerate {self.key}: bitwise equal ({what})"
        if self.equal:
            return (
                f"regenerate {self.key}: equal within tolerance (max abs pixel diff {self.max_abs_diff} <= "
                f"{self.tolerance}; {what})"
            )
        problems = []
        if not self.image_equal:
            pixels = (self.width or 0) * (self.height or 0)
            problems.append(
                f"{self.differing_pixels} of {pixels} pixels differ, max abs diff {self.max_abs_diff} "
                f"(tolerance {self.tolerance})"
            )
        if not self.caption_equal:
            problems.append(f"caption {self.caption!r} regenerated as {self.regenerated_caption!r}")
        return f"regenerate {self.key}: differs ({what}): " + "; ".join(problems + list(self.disagreements))

    def to_dict(self) -> dict[str, Any]:
        """The comparison as plain values (the regenerated image left out), with ``equal`` and ``bitwise``."""
        values = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("image", "disagreements")
        }
        return values | {
            "disagreements": list(self.disagreements),
            "equal": self.equal,
            "bitwise": self.bitwise,
        }


@dataclass(frozen=True)
class _Recipe:
    """Everything the record is regenerated from."""

    mode: Mode
    seed: int
    model: ModelSpec
    version: str  # the checkpoint identity the record was made with
    output: OutputSpec
    watermark: tuple[bytes, str] | None  # (payload, method)
    exact: bool  # the job ran on CPU in float32
    threads: int  # the intra-op threads of the job's engine actors on CPU (Ray's default for their CPUs)


def regenerate(
    output_uri: str,
    key: str,
    *,
    checkpoint: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    input_uri: str | None = None,
) -> Regeneration:
    """Regenerate record ``key`` of the finished job at ``output_uri`` on ``device`` and compare it.

    ``checkpoint`` (a folder or URI) replaces the spec's checkpoint location; either way its identity must be
    the record's. ``input_uri`` replaces the spec's input location for records whose input image is read from
    the corpus. ``RecordLookupError`` for an unknown key, ``CannotRegenerate`` for a record that cannot be
    regenerated (see the module doc). ``threads``: torch's intra-op threads (default: the job's actors')."""
    stored = find_record(output_uri, key, storage_options)
    return regenerate_record(
        stored,
        checkpoint=checkpoint,
        device=device,
        threads=threads,
        storage_options=storage_options,
        input_uri=input_uri,
    )


def regenerate_record(
    stored: StoredRecord,
    *,
    checkpoint: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    input_uri: str | None = None,
) -> Regeneration:
    """``regenerate`` for a record already found (``find_record``)."""
    recipe, disagreements = _recipe(stored)
    _check_regenerable(stored, recipe)
    options = dict(storage_options or {})
    source = _input_file(stored, recipe, options, input_uri)  # read (or refused) before any model is loaded
    engine = _engine(checkpoint or recipe.model.checkpoint, stored.key, recipe, device, options)
    threads = threads or recipe.threads
    with _torch_threads(threads):
        inputs = _inputs(stored, recipe, source, engine.resolution)
        result = engine.run(inputs, [recipe.seed], mode=recipe.mode)[0]
    if not result.ok:
        raise CannotRegenerate(f"record {stored.key!r}: the engine failed on it: {result.error}")
    if recipe.mode.input == ModeInput.TEXT and result.prompt_used != stored.row.get(r.PROMPT_USED):
        disagreements.append(
            f"the row says the model saw {stored.row.get(r.PROMPT_USED)!r} of its prompt, regenerated "
            f"{result.prompt_used!r}"
        )
    image = _encoded(result.image, recipe, stored.key) if recipe.mode.makes_image else None
    comparison = _compare(stored.row.get(r.IMAGE), image) if image is not None else (None, None, None)
    width, height = comparison[2] or (None, None)
    return Regeneration(
        key=stored.key,
        outcome=stored.outcome,
        mode=recipe.mode.value,
        seed=recipe.seed,
        device=device,
        threads=threads,
        tolerance=0 if recipe.exact and device == "cpu" else PIXEL_TOLERANCE,
        width=width,
        height=height,
        max_abs_diff=comparison[0],
        differing_pixels=comparison[1],
        caption=stored.row.get(r.GENERATED_CAPTION),
        regenerated_caption=result.text if recipe.mode.makes_text else None,
        disagreements=tuple(disagreements),
        image=image,
    )


# --- what the record is made from -------------------------------------------------------------------------------
def _recipe(stored: StoredRecord) -> tuple[_Recipe, list[str]]:
    """The record's recipe, and where its row, its marks and the summary disagree."""
    config, row, key = stored.config, stored.row, stored.key
    if stored.outcome == "errored":
        raise CannotRegenerate(
            f"record {key!r} errored ({row.get(r.REASON)}): an errored record has no output to regenerate"
        )
    model, disagreements = _model(stored)
    mode = Mode(row.get(r.MODE) or model.mode)
    if mode != model.mode:
        disagreements.append(f"the row's mode {mode.value} is not the job's ({model.mode.value})")
    if row.get(r.SEED) is None:
        raise CannotRegenerate(f"record {key!r} has no seed")
    seed = int(row[r.SEED])
    version = _version(stored, disagreements)
    try:
        output = OutputSpec.model_validate(config.get("output") or {})
        provenance = ProvenanceSpec.model_validate(
            {k: v for k, v in (config.get("provenance") or {}).items() if k != "c2pa"}  # keys are redacted
        )
    except ValidationError as error:
        raise CannotRegenerate(f"the summary's config of record {key!r} is not a job's: {error}") from None
    watermark = None
    if provenance.watermark and mode.makes_image:
        fingerprint = stored.summary.get("fingerprint")
        if not fingerprint:
            raise CannotRegenerate(
                f"record {key!r}: the job watermarks its images but its summary has no fingerprint"
            )
        watermark = (watermark_payload(str(fingerprint)), provenance.watermark_method)
    resources = ResourcesSpec.model_validate(config.get("resources") or {})
    on_cpu = resources.gpus_per_actor == 0
    threads = stored.summary.get("engine_threads") or resources.engine_threads
    exact = on_cpu and model.dtype == "float32"
    recipe = _Recipe(mode, seed, model, version, output, watermark, exact, threads)
    if stored.marks is not None or mode.makes_image:
        disagreements += _marks_disagreements(stored, recipe)
    return recipe, disagreements


def _model(stored: StoredRecord) -> tuple[ModelSpec, list[str]]:
    """The sampling settings: the row's ``params``, else (a row without them) the job's ``config.model``."""
    job = dict(stored.config.get("model") or {})
    values, disagreements = job, []
    text = stored.row.get(r.PARAMS)
    if text:
        try:
            params = json.loads(text)
        except json.JSONDecodeError as error:
            raise CannotRegenerate(f"record {stored.key!r}: its params are not JSON: {error}") from None
        values = params | {"checkpoint": job.get("checkpoint"), "model_id": job.get("model_id")}
        differing = sorted(name for name in params if params[name] != job.get(name))
        if differing:
            disagreements.append(
                f"the row's params differ from the job's model settings in {', '.join(differing)}"
            )
    try:
        return ModelSpec.model_validate(values), disagreements
    except ValidationError as error:
        raise CannotRegenerate(f"record {stored.key!r}: its model settings are not valid: {error}") from None


def _version(stored: StoredRecord, disagreements: list[str]) -> str:
    """The checkpoint identity the record was made with: its marks', else the summary's."""
    summary_version = (stored.summary.get("model_versions") or {}).get("checkpoint")
    version = stored.marks.model_version if stored.marks is not None else summary_version
    if not version:
        raise CannotRegenerate(
            f"record {stored.key!r}: neither its marks nor the summary name its checkpoint version"
        )
    return str(version)


def _marks_disagreements(stored: StoredRecord, recipe: _Recipe) -> list[str]:
    """Where the generation record in the image contradicts the row and the job."""
    marks = stored.marks
    if marks is None:
        return (
            [stored.marks_problem or "its image carries no generation record"]
            if stored.row.get(r.IMAGE)
            else []
        )
    row, config, model = stored.row, stored.config, recipe.model
    text_input = recipe.mode.input == ModeInput.TEXT
    expected = {
        "key": stored.key,
        "mode": recipe.mode.value,
        "seed": recipe.seed,
        "prompt": (row.get(r.PROMPT_USED) or row.get(r.PROMPT) or None) if text_input else None,
        "model_id": model.model_id or model.checkpoint,
        "model_version": (stored.summary.get("model_versions") or {}).get("checkpoint"),
        "steps": model.steps,
        "guidance_scale": float(model.guidance_scale),
        "cfg_mode": model.t2i_cfg_mode,
        "data_type": model.data_type,
        "dtype": model.dtype,
        "job": config.get("name"),
    }
    return [
        f"its image's marks say {name} {getattr(marks, name)!r}, the row and the job {value!r}"
        for name, value in expected.items()
        if getattr(marks, name) != value
    ]


def _check_regenerable(stored: StoredRecord, recipe: _Recipe) -> None:
    row, mode, key = stored.row, recipe.mode, stored.key
    generated = (
        (row.get(r.IMAGE) is not None) if mode.makes_image else (row.get(r.GENERATED_CAPTION) is not None)
    )
    if not generated:
        when = "rejected before generation" if stored.outcome == "rejected" else "written without an output"
        raise CannotRegenerate(
            f"record {key!r} was {when} ({row.get(r.REASON)}): there is nothing to compare with"
        )


def _engine(
    location: str, key: str, recipe: _Recipe, device: str, storage_options: dict[str, Any]
) -> UniDiffuserEngine:
    """The engine on the checkpoint at ``location``, refused unless it has the record's identity."""
    try:
        found = checkpoint_identity(location, storage_options=storage_options)
    except (CheckpointError, OSError, ValueError) as error:
        raise CannotRegenerate(
            f"cannot read the checkpoint at {redact(location)}: {describe_error(error)}"
        ) from None
    if found != recipe.version:
        raise CannotRegenerate(
            f"record {key!r} was made with checkpoint version {recipe.version}, but the checkpoint at "
            f"{redact(location)} has version {found}: point --checkpoint at a copy of version {recipe.version} "
            "(a copy keeps the version only with the same files, sizes and modification times or ETags)"
        )
    try:
        config = EngineConfig.build(**recipe.model.sampling_values(), device=device, batch_size=1)
        return UniDiffuserEngine.from_pretrained(
            location, config, storage_options=storage_options, identity=recipe.version
        )
    except EngineConfigError as error:
        raise CannotRegenerate(f"record {key!r}: {error}") from None


def _keeps_input_image(recipe: _Recipe) -> bool:
    """Whether the record's row holds the image its model input was prepared from: i2t's source file, or its
    model input written losslessly."""
    policy = recipe.output.caption_image
    return recipe.mode == Mode.I2T and (
        policy == CaptionImage.SOURCE
        or (policy == CaptionImage.MODEL_INPUT and image_format(recipe.output.image_format) == "png")
    )


def _input_file(
    stored: StoredRecord, recipe: _Recipe, storage_options: dict[str, Any], input_uri: str | None
) -> bytes | None:
    """An image-input record's input file when the output keeps none, read from the job's corpus or its copy
    at ``input_uri`` (None for the other records)."""
    if recipe.mode.input != ModeInput.IMAGE or _keeps_input_image(recipe):
        return None
    try:
        return read_input_image(stored, storage_options, input_uri=input_uri)
    except InputImageError as error:
        raise CannotRegenerate(str(error)) from None


def _inputs(stored: StoredRecord, recipe: _Recipe, source: bytes | None, resolution: int) -> list[Any] | None:
    """The one input the record was made from, as the generate stage received it (None: a seed only);
    ``source`` is the input file read from the corpus (``_input_file``), if it was."""
    row, key = stored.row, stored.key
    if recipe.mode.input == ModeInput.NOTHING:
        return None
    if recipe.mode.input == ModeInput.TEXT:
        prompt = row.get(r.PROMPT)
        if prompt is None:
            raise CannotRegenerate(f"record {key!r} has no prompt")
        return [prompt]
    if source is None and recipe.output.caption_image == CaptionImage.MODEL_INPUT:
        return [_decode(row[r.IMAGE])]  # the model input itself, written losslessly
    data = row[r.IMAGE] if source is None else source
    try:  # what preprocess does with the input file
        return [prepare_image(data, resolution, max_pixels=recipe.model.max_image_pixels).pixels]
    except InputError as error:
        raise CannotRegenerate(f"record {key!r}: its input image cannot be prepared: {error}") from None


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block, and restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- what it makes, and the comparison --------------------------------------------------------------------------
def _encoded(pixels: np.ndarray | None, recipe: _Recipe, key: str) -> bytes | None:
    """The regenerated image as the job's writers encode it (watermarked first when the job is)."""
    if pixels is None:
        return None
    if recipe.watermark is not None:
        payload, method = recipe.watermark
        try:
            pixels = embed_watermark(pixels, payload, method)  # type: ignore[arg-type]
        except WatermarkError as error:
            raise CannotRegenerate(
                f"record {key!r}: the regenerated image cannot be watermarked: {error}"
            ) from None
    out = recipe.output
    encoded = shard_image(
        {r.OUT_PIXELS: pixels},
        recipe.mode,
        out.caption_image,
        image_format(out.image_format),
        out.image_quality,
    )
    return None if encoded is None else encoded.data


def _compare(written: bytes | None, regenerated: bytes) -> tuple[int, int, tuple[int, int]]:
    """(max abs channel difference, pixels with any difference, regenerated (width, height)) of the decoded
    images; a written image of another size differs everywhere."""
    new = _decode(regenerated)
    height, width = new.shape[:2]
    old = _decode(written) if written is not None else None
    if old is None or old.shape != new.shape:
        return 255, width * height, (width, height)
    diff = np.abs(old.astype(np.int16) - new.astype(np.int16))
    return int(diff.max()), int(np.count_nonzero(diff.max(axis=2))), (width, height)


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
