"""Pre-flight checks before any GPU work: the spec is valid and every location it names is reachable and usable
(the checkpoint's configs parse and its weight files are whole, judged from their headers without loading).
Each problem is one line naming the key and the location, credentials never shown."""

from __future__ import annotations

import uuid

from pipelines.config import InputKind, PipelineConfig
from unidiffuser.checkpoint import checkpoint_problems, read_checkpoint_resolution, resolution_problem
from unidiffuser.locations import describe_error, open_location, redact


def check_input(config: PipelineConfig, options: dict) -> list[str]:
    spec = config.input
    if spec.kind == InputKind.COUNT or spec.uri is None:
        return []
    shown = redact(spec.uri)
    try:
        fs, path = open_location(spec.uri, options)
        found = bool(fs.glob(path)) if any(ch in path for ch in "*?[") else fs.exists(path)
    except Exception as exc:  # any storage error is a reachability problem to report
        return [f"input.uri: cannot reach {shown}: {describe_error(exc)}"]
    return [] if found else [f"input.uri: nothing found at {shown}"]


def check_checkpoint(config: PipelineConfig, options: dict) -> list[str]:
    uri = config.model.checkpoint
    try:
        problems = checkpoint_problems(uri, storage_options=options)
        if problems:
            return [f"model.checkpoint: {p}" for p in problems]
        resolution = read_checkpoint_resolution(uri, storage_options=options)
    except Exception as exc:
        return [f"model.checkpoint: cannot reach {redact(uri)}: {describe_error(exc)}"]
    problem = resolution_problem(config.model.resolution, resolution)
    return [] if problem is None else [f"model.resolution: {problem}"]


def check_clip(config: PipelineConfig, options: dict) -> list[str]:
    if not config.clip.enabled or config.clip.model is None:
        return []
    shown = redact(config.clip.model)
    try:
        fs, path = open_location(config.clip.model, options)
        if not fs.exists(f"{path.rstrip('/')}/config.json"):
            return [f"clip.model: no config.json in {shown}"]
    except Exception as exc:
        return [f"clip.model: cannot reach {shown}: {describe_error(exc)}"]
    return []


def check_curation(config: PipelineConfig, options: dict) -> list[str]:
    """Each score head is readable and fits the CLIP model (input size, labels); each dedup reference set is
    readable and of the CLIP model's size; the blocklist parses."""
    from pipelines.blocklist import Blocklist, BlocklistError
    from pipelines.dedup.references import validate_reference
    from pipelines.heads.validate import validate_head

    problems: list[str] = []
    curation = config.curation
    dim = None
    if curation.heads or curation.dedup.references:
        dim, problems = _clip_embedding_dim(config, options)
    for i, head in enumerate(curation.heads):
        problems += validate_head(head, dim, options, key=f"curation.heads.{i}")
    dedup = curation.dedup
    for i, entry in enumerate(dedup.references):
        for problem in validate_reference(entry.spec(dedup.threshold), dim, options):
            problems.append(f"curation.dedup.references.{i}: {problem}")
    if curation.blocklist:
        try:
            Blocklist.load(curation.blocklist, options)
        except BlocklistError as exc:
            problems.append(f"curation.blocklist: {exc}")
    return problems


def _clip_embedding_dim(config: PipelineConfig, options: dict) -> tuple[int | None, list[str]]:
    """The CLIP model's embedding size (None where it cannot be known), and the problem reading it."""
    from pipelines.heads.remote import clip_embedding_dim

    if not (config.clip.enabled and config.clip.model) or check_clip(config, options):
        return None, []
    try:
        return clip_embedding_dim(config.clip.model, options), []
    except Exception as exc:
        return None, [f"clip.model: cannot read its embedding size: {describe_error(exc)}"]


def check_provenance(config: PipelineConfig, options: dict) -> list[str]:
    """The C2PA certificate and key can sign (a trial signature); a watermark fits the checkpoint's images."""
    from pipelines.provenance.c2pa_manifest import SignerError
    from pipelines.provenance.job_marks import load_job_signer
    from pipelines.provenance.watermark import MIN_PIXELS

    spec = config.provenance
    problems = []
    if spec.c2pa is not None:
        try:
            load_job_signer(spec.c2pa, options)
        except (SignerError, ImportError) as exc:
            problems.append(f"provenance.c2pa: {exc}")
    if spec.watermark:
        try:
            side = read_checkpoint_resolution(config.model.checkpoint, storage_options=options)
        except Exception:
            side = None  # check_checkpoint names the problem
        if side is not None and side * side < MIN_PIXELS:
            problems.append(
                f"provenance.watermark: the checkpoint makes {side} x {side} px images; the watermark needs "
                f"{MIN_PIXELS} pixels (256 x 256) or more"
            )
    return problems


def check_output(config: PipelineConfig, options: dict) -> list[str]:
    """The output location accepts a write (a probe file is written and removed)."""
    try:
        fs, path = open_location(config.output.uri, options)
        probe = f"{path.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as exc:
        return [f"output.uri: cannot write to {redact(config.output.uri)}: {describe_error(exc)}"]
    return []


def preflight(config: PipelineConfig) -> list[str]:
    """Every reachability problem of a (structurally valid) spec, all at once."""
    options = config.storage.storage_options()
    checks = (check_input, check_checkpoint, check_clip, check_curation, check_provenance, check_output)
    return [problem for check in checks for problem in check(config, options)]
