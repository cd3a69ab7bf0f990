"""Cheap checks of a head spec against its files, for a job's ``validate`` (nothing is copied into the cache).

Each problem names the spec key and its value: a missing or unreadable head, a head whose input size is not
the CLIP model's embedding size, a classifier label the model does not have, weights that do not fit their
config.
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from pipelines.heads.base import WEIGHT_SUFFIXES, HeadError
from pipelines.heads.classifier import model_labels
from pipelines.heads.laion import check_kind, detect_layout
from pipelines.heads.mlp_config import CONFIG_FILE, WEIGHTS_FILE, parse_head_config, shape_problems
from pipelines.heads.remote import open_folder, read_json, weight_shapes
from pipelines.heads.spec import HeadSpec
from unidiffuser.locations import redact


def validate_head(
    spec: HeadSpec,
    clip_embedding_dim: int | None,
    storage_options: dict[str, Any] | None = None,
    *,
    key: str | None = None,
) -> list[str]:
    """Problems of one head (empty when it is usable). ``clip_embedding_dim``: the CLIP model's image
    embedding size (``pipelines.heads.remote.clip_embedding_dim``), or None to skip that check; ``key``: how
    the spec names this head (default ``heads.<name>``)."""
    key = key or f"heads.{spec.name}"
    at = f"{key}.uri = {redact(spec.uri)!r}"
    try:
        fs, root, files = open_folder(spec.uri, storage_options)
        if spec.kind == "classifier":
            return _classifier_problems(spec, fs, root, files, key, at)
        input_dim = _embedding_input_dim(spec, fs, root, files)
    except HeadError as exc:
        return [f"{at}: {exc}"]
    except Exception as exc:  # unreachable storage, permissions, a corrupt file
        return [f"{at}: cannot read the head: {type(exc).__name__}: {exc}"]
    if clip_embedding_dim is not None and input_dim != clip_embedding_dim:
        return [f"{at}: the head takes embeddings of size {input_dim}, the CLIP model's embedding size is "
                f"{clip_embedding_dim} (clip.model)"]  # fmt: skip
    return []


def _embedding_input_dim(spec: HeadSpec, fs: AbstractFileSystem, root: str, files: dict[str, int]) -> int:
    """The input size an embedding head's files declare, after checking that they fit together."""
    if spec.kind == "mlp":
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if name not in files:
                raise HeadError(
                    f"no {name} (kind 'mlp' is the generic head format: {CONFIG_FILE} + {WEIGHTS_FILE})"
                )
        with fs.open(f"{root}/{CONFIG_FILE}", "rb") as f:
            config = parse_head_config(f.read(), CONFIG_FILE)
        problems = shape_problems(config.weight_shapes(), weight_shapes(fs, f"{root}/{WEIGHTS_FILE}"))
        if problems:
            raise HeadError(f"{WEIGHTS_FILE} does not fit {CONFIG_FILE}: {'; '.join(problems)}")
        return config.input_dim
    found = sorted(name for name in files if name.endswith(WEIGHT_SUFFIXES))
    if len(found) != 1:
        raise HeadError(
            f"expected one weights file ({', '.join(WEIGHT_SUFFIXES)}), found {', '.join(found) or 'none'}"
        )
    layout = detect_layout(weight_shapes(fs, f"{root}/{found[0]}"), found[0])
    check_kind(layout, spec.kind, found[0])
    return layout.config.input_dim


def _classifier_problems(
    spec: HeadSpec, fs: AbstractFileSystem, root: str, files: dict[str, int], key: str, at: str
) -> list[str]:
    problems = [f"{at}: no {name} ({what})" for name, what in
                (("config.json", "the model's config"), ("preprocessor_config.json", "its image processor"))
                if name not in files]  # fmt: skip
    if "config.json" in files:
        labels = model_labels(read_json(fs, f"{root}/config.json"))
        if not labels:
            problems.append(f"{at}: config.json has no id2label: not an image classifier")
        elif spec.label not in labels:
            problems.append(
                f"{key}.label = {spec.label!r}: not a label of the classifier at {redact(spec.uri)} "
                f"(labels: {', '.join(labels)})"
            )
    return problems
