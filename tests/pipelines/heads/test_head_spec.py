"""The head spec (defaults, rules) and ``validate_head``: every problem names the key and its value."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from pipelines.heads import (
    HeadSpec,
    MLPHeadConfig,
    build_mlp,
    clip_embedding_dim,
    save_mlp_head,
    validate_head,
)
from unidiffuser.tiny import write_tiny_clip


@pytest.mark.parametrize(
    ("name", "kind", "column"),
    [
        ("aesthetic", "mlp", "aesthetic"),
        ("laion", "laion_aesthetic", "aesthetic"),
        ("nsfw", "classifier", "punsafe"),
        ("not_safe", "mlp", "punsafe"),
        ("detector", "laion_nsfw", "punsafe"),
        ("watermark", "classifier", "pwatermark"),
        ("sharpness", "mlp", "sharpness"),
    ],
)
def test_default_columns(name: str, kind: str, column: str):
    label = {"label": "x"} if kind == "classifier" else {}
    assert HeadSpec(name=name, kind=kind, uri="/h", **label).column == column
    assert HeadSpec(name=name, kind=kind, uri="/h", column="mine", **label).column == "mine"


def test_spec_rules():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        HeadSpec.model_validate({"name": "a", "kind": "mlp", "uri": "/h", "threshold": 1})
    with pytest.raises(ValidationError, match=r"head 'wm': label is required for kind 'classifier'"):
        HeadSpec(name="wm", kind="classifier", uri="/h")
    with pytest.raises(ValidationError, match=r"head 'a': label applies to kind 'classifier' only"):
        HeadSpec(name="a", kind="mlp", uri="/h", label="x")
    with pytest.raises(ValidationError, match=r"head 'a': min \(5.0\) must not exceed max \(1.0\)"):
        HeadSpec(name="a", kind="mlp", uri="/h", min=5, max=1)
    with pytest.raises(ValidationError, match="kind"):
        HeadSpec.model_validate({"name": "a", "kind": "svm", "uri": "/h"})
    with pytest.raises(ValidationError, match="applies_to"):
        HeadSpec.model_validate({"name": "a", "kind": "mlp", "uri": "/h", "applies_to": "both"})
    assert HeadSpec(name="a", kind="mlp", uri="/h").input == "embedding"
    assert HeadSpec(name="a", kind="classifier", uri="/h", label="x").input == "image"


def mlp_head(folder: Path, dim: int) -> Path:
    config = MLPHeadConfig(input_dim=dim, hidden=[4])
    return save_mlp_head(folder, config, build_mlp(config).state_dict())


def test_valid_heads_have_no_problems(tmp_path: Path):
    clip = write_tiny_clip(tmp_path / "clip")
    dim = clip_embedding_dim(str(clip))
    assert dim == 16
    assert validate_head(HeadSpec(name="a", kind="mlp", uri=str(mlp_head(tmp_path / "a", dim))), dim) == []
    (tmp_path / "v1").mkdir()
    torch.save(torch.nn.Linear(dim, 1).state_dict(), tmp_path / "v1" / "sa_0_4_vit_l_14_linear.pth")
    assert validate_head(HeadSpec(name="b", kind="laion_aesthetic", uri=str(tmp_path / "v1")), dim) == []


def test_missing_folder_and_files(tmp_path: Path):
    spec = HeadSpec(name="aesthetic", kind="mlp", uri=str(tmp_path / "absent"))
    assert validate_head(spec, 32) == [
        f"heads.aesthetic.uri = '{tmp_path / 'absent'}': no head folder at {tmp_path / 'absent'}"
    ]
    (tmp_path / "empty").mkdir()
    spec = HeadSpec(name="aesthetic", kind="mlp", uri=str(tmp_path / "empty"))
    assert validate_head(spec, 32, key="heads[0]") == [
        f"heads[0].uri = '{tmp_path / 'empty'}': no head.json "
        "(kind 'mlp' is the generic head format: head.json + model.safetensors)"
    ]
    laion = HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(tmp_path / "empty"))
    assert validate_head(laion, 32) == [
        f"heads.aesthetic.uri = '{tmp_path / 'empty'}': "
        "expected one weights file (.safetensors, .pth, .pt, .bin), found none"
    ]


def test_input_size_mismatch_names_both_sizes(tmp_path: Path):
    spec = HeadSpec(name="aesthetic", kind="mlp", uri=str(mlp_head(tmp_path / "a", 768)))
    assert validate_head(spec, 32) == [
        f"heads.aesthetic.uri = '{spec.uri}': the head takes embeddings of size 768, "
        "the CLIP model's embedding size is 32 (clip.model)"
    ]
    assert validate_head(spec, None) == []  # no CLIP size to compare with


def test_weights_that_do_not_fit_and_a_broken_head_json(tmp_path: Path):
    folder = mlp_head(tmp_path / "a", 8)
    text = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**text, "hidden": [6]}))
    [problem] = validate_head(HeadSpec(name="a", kind="mlp", uri=str(folder)), 8)
    assert f"heads.a.uri = '{folder}': model.safetensors does not fit head.json: " in problem
    assert "layers.0.weight has shape (4, 8), expected (6, 8)" in problem
    (folder / "head.json").write_text("{not json")
    [problem] = validate_head(HeadSpec(name="a", kind="mlp", uri=str(folder)), 8)
    assert problem.startswith(f"heads.a.uri = '{folder}': head.json: ") and "Invalid JSON" in problem


def test_classifier_label_and_files(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, id2label={0: "sfw", 1: "nsfw"}, label2id={"sfw": 0, "nsfw": 1},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "c")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "c")
    uri = upload(tmp_path / "c", "nsfw")
    good = HeadSpec(name="nsfw", kind="classifier", uri=uri, label="nsfw")
    assert validate_head(good, 32, s3fs_storage_options) == []
    bad = good.model_copy(update={"label": "porn"})
    assert validate_head(bad, 32, s3fs_storage_options) == [
        f"heads.nsfw.label = 'porn': not a label of the classifier at {uri} (labels: sfw, nsfw)"
    ]
    (tmp_path / "c" / "preprocessor_config.json").unlink()
    local = HeadSpec(name="nsfw", kind="classifier", uri=str(tmp_path / "c"), label="nsfw")
    assert validate_head(local, 32) == [
        f"heads.nsfw.uri = '{tmp_path / 'c'}': no preprocessor_config.json (its image processor)"
    ]


def test_laion_layouts_over_s3(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    (tmp_path / "nsfw").mkdir()
    state = {"norm.mean": torch.zeros(768), "norm.variance": torch.ones(768),
             "linear_1.weight": torch.zeros(64, 768), "linear_1.bias": torch.zeros(64),
             "linear_2.weight": torch.zeros(1, 64), "linear_2.bias": torch.zeros(1)}  # fmt: skip
    torch.save(state, tmp_path / "nsfw" / "clip_ViT-L-14_openai_binary_nsfw_head.pth")
    uri = upload(tmp_path / "nsfw", "nsfw")
    assert validate_head(HeadSpec(name="nsfw", kind="laion_nsfw", uri=uri), 768, s3fs_storage_options) == []
    [size] = validate_head(HeadSpec(name="nsfw", kind="laion_nsfw", uri=uri), 32, s3fs_storage_options)
    assert size == (f"heads.nsfw.uri = '{uri}': the head takes embeddings of size 768, "
                    "the CLIP model's embedding size is 32 (clip.model)")  # fmt: skip
    [kind] = validate_head(HeadSpec(name="nsfw", kind="laion_aesthetic", uri=uri), 768, s3fs_storage_options)
    assert kind == (f"heads.nsfw.uri = '{uri}': clip_ViT-L-14_openai_binary_nsfw_head.pth holds LAION's "
                    "nsfw-detector layout, which is kind 'laion_nsfw', not 'laion_aesthetic'")  # fmt: skip
