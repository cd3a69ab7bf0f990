"""The generic MLP head format: save, load from object storage (pinned by identity), score."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.heads import (
    HeadError,
    HeadSpec,
    MLPHeadConfig,
    build_mlp,
    head_identity,
    load_head,
    save_mlp_head,
)
from pipelines.heads.remote import safetensors_shapes
from unidiffuser.checkpoint import checkpoint_identity


def trained_like(config: MLPHeadConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_mlp(config)


def reference(net: torch.nn.Module, config: MLPHeadConfig, x: np.ndarray) -> np.ndarray:
    """What the format says the score is, in plain torch from the saved state dict."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    h = torch.from_numpy(x)
    if config.normalize_input:
        h = h / h.norm(dim=-1, keepdim=True)
    n = len(config.hidden) + 1
    for k in range(n):
        h = h @ state[f"layers.{k}.weight"].T + state[f"layers.{k}.bias"]
        if k < n - 1:
            h = torch.nn.functional.gelu(h) if config.activation == "gelu" else torch.relu(h)
    if config.output == "probability":
        return torch.sigmoid(h[:, 0]).numpy()
    if config.output == "softmax":
        return torch.softmax(h, -1)[:, config.score_index].numpy()
    return h[:, 0].numpy()


def embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_round_trip_through_s3(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    config = MLPHeadConfig(input_dim=32, hidden=[16, 8], output="probability", description="a test head")
    net = trained_like(config)
    local = save_mlp_head(tmp_path / "local", config, net.state_dict())
    assert sorted(p.name for p in local.iterdir()) == ["head.json", "model.safetensors"]
    written = json.loads((local / "head.json").read_text())
    assert written["format"] == "unidiffuser-batch/mlp-head" and written["version"] == 1
    uri = upload(local, "not_safe")
    spec = HeadSpec(name="not_safe", kind="mlp", uri=uri, max=0.5)
    assert spec.column == "punsafe"
    head = load_head(spec, storage_options=s3fs_storage_options, cache_dir=tmp_path / "cache")
    assert head.input == "embedding" and head.embedding_dim == 32
    assert head.identity == checkpoint_identity(uri, storage_options=s3fs_storage_options)
    x = embeddings(40, 32)
    scores = head.score_embeddings(x)
    np.testing.assert_allclose(scores, reference(net, config, x), rtol=1e-5, atol=1e-6)
    assert ((scores > 0) & (scores < 1)).all() and scores.std() > 0


def test_a_head_replaced_after_it_was_pinned_fails_loudly(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    config = MLPHeadConfig(input_dim=8, hidden=[4])
    uri = upload(save_mlp_head(tmp_path / "v1", config, trained_like(config, 0).state_dict()), "aesthetic")
    spec = HeadSpec(name="aesthetic", kind="mlp", uri=uri)
    pinned = head_identity(spec, s3fs_storage_options)
    upload(save_mlp_head(tmp_path / "v2", config, trained_like(config, 1).state_dict()), "aesthetic")
    with pytest.raises(HeadError, match=f"head 'aesthetic': checkpoint {uri} changed since it was pinned"):
        load_head(spec, storage_options=s3fs_storage_options, identity=pinned, cache_dir=tmp_path / "cache")
    current = load_head(spec, storage_options=s3fs_storage_options, cache_dir=tmp_path / "cache")
    assert current.identity != pinned


@pytest.mark.parametrize(
    "config",
    [
        MLPHeadConfig(input_dim=12),  # linear regression head
        MLPHeadConfig(input_dim=12, hidden=[6], activation="gelu", normalize_input=False),
        MLPHeadConfig(
            input_dim=12,
            hidden=[6],
            output="softmax",
            classes=3,
            score_index=2,
            labels=["clean", "faint", "watermark"],
        ),  # fmt: skip
    ],
    ids=["linear", "gelu-raw-input", "softmax"],
)
def test_outputs(tmp_path: Path, config: MLPHeadConfig):
    net = trained_like(config, 7)
    head = load_head(
        HeadSpec(name="h", kind="mlp", uri=str(save_mlp_head(tmp_path / "h", config, net.state_dict())))
    )
    x = embeddings(25, 12, seed=1)
    np.testing.assert_allclose(head.score_embeddings(x), reference(net, config, x), rtol=1e-5, atol=1e-6)
    assert head.score_embeddings(np.zeros((0, 12), np.float32)).shape == (0,)


def test_non_finite_embeddings_give_non_finite_scores(tmp_path: Path):
    config = MLPHeadConfig(input_dim=4, hidden=[3])
    folder = save_mlp_head(tmp_path / "h", config, trained_like(config).state_dict())
    head = load_head(HeadSpec(name="h", kind="mlp", uri=str(folder)))
    x = embeddings(3, 4)
    x[1, 2] = np.nan
    scores = head.score_embeddings(x)
    assert np.isfinite(scores[[0, 2]]).all() and np.isnan(scores[1])


def test_bad_files_are_named(tmp_path: Path):
    config = MLPHeadConfig(input_dim=8, hidden=[4])
    folder = save_mlp_head(tmp_path / "h", config, trained_like(config).state_dict())
    spec = HeadSpec(name="aesthetic", kind="mlp", uri=str(folder))
    text = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**text, "activation": "swish", "depth": 3}))
    with pytest.raises(HeadError, match=r"head.json: activation: Input should be .*; depth: Extra inputs"):
        load_head(spec)
    (folder / "head.json").write_text(json.dumps({**text, "hidden": [5]}))
    with pytest.raises(HeadError, match=r"layers.0.weight has shape \(4, 8\), expected \(5, 8\)"):
        load_head(spec)
    (folder / "head.json").unlink()
    with pytest.raises(HeadError, match=f"head 'aesthetic': no head.json in {folder}"):
        load_head(spec)
    with pytest.raises(HeadError, match=r"missing tensors \['layers.1.bias', 'layers.1.weight'\]"):
        first_layer = {k: v for k, v in trained_like(config).state_dict().items() if k.startswith("layers.0")}
        save_mlp_head(tmp_path / "x", MLPHeadConfig(input_dim=8, hidden=[4]), first_layer)


def test_config_rules():
    with pytest.raises(ValueError, match="output 'softmax' needs classes and score_index"):
        MLPHeadConfig(input_dim=4, output="softmax")
    with pytest.raises(ValueError, match="score_index 3 is not a class of 3"):
        MLPHeadConfig(input_dim=4, output="softmax", classes=3, score_index=3)
    with pytest.raises(ValueError, match="labels names 2 classes, classes is 3"):
        MLPHeadConfig(input_dim=4, output="softmax", classes=3, score_index=0, labels=["a", "b"])
    with pytest.raises(ValueError, match="belong to output 'softmax', not 'probability'"):
        MLPHeadConfig(input_dim=4, output="probability", score_index=0)


def test_saved_weights_are_float32_safetensors_whose_header_gives_the_shapes(tmp_path: Path):
    config = MLPHeadConfig(input_dim=6, hidden=[3])
    state = {k: v.to(torch.bfloat16) for k, v in trained_like(config).state_dict().items()}
    folder = save_mlp_head(tmp_path / "h", config, state)
    assert {v.dtype for v in load_file(folder / "model.safetensors").values()} == {torch.float32}
    assert (
        safetensors_shapes(fsspec.filesystem("file"), str(folder / "model.safetensors"))
        == config.weight_shapes()
    )
