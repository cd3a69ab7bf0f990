"""LAION's published heads, written here in their published key layouts (random weights), load through the
same code path as a user's real file and score what their own forward (plain torch, built here from the
published module definitions) computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipelines.heads import HeadError, HeadSpec, load_head


def aesthetic_v2(dim: int = 768) -> nn.Module:
    """improved-aesthetic-predictor's MLP (``sac+logos+ava1-l14-linearMSE.pth``): a ``layers`` Sequential."""
    module = nn.Module()
    module.layers = nn.Sequential(
        nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
        nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )  # fmt: skip
    module.forward = module.layers.forward
    return module


def aesthetic_v2_relu(dim: int = 768) -> nn.Module:
    """The ``reluMSE`` variant of the same predictor."""
    module = nn.Module()
    module.layers = nn.Sequential(
        nn.Linear(dim, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1),
    )  # fmt: skip
    module.forward = module.layers.forward
    return module


class Normalization(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.randn(dim) * 0.01)
        self.register_buffer("variance", torch.rand(dim) * 0.01 + 0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.variance.sqrt() + 1e-10)


class NSFWL14(nn.Module):
    """CLIP-based-NSFW-Detector's ViT-L-14 head (``clip_ViT-L-14_openai_binary_nsfw_head.pth``)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.norm = Normalization(dim)
        self.linear_1, self.linear_2 = nn.Linear(dim, 64), nn.Linear(64, 512)
        self.linear_3, self.linear_4 = nn.Linear(512, 256), nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for layer in (self.linear_1, self.linear_2, self.linear_3):
            x = torch.relu(layer(x))
        return torch.sigmoid(self.linear_4(x))


def normalised(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(module: nn.Module, embeddings: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(embeddings)).numpy()[:, 0]


def write(module: nn.Module, folder: Path, filename: str) -> Path:
    folder.mkdir(parents=True)
    state = module.state_dict()
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / filename)
    else:
        torch.save(state, folder / filename)
    return folder


@pytest.mark.parametrize("filename", ["sac+logos+ava1-l14-linearMSE.pth", "aesthetic.safetensors"])
def test_aesthetic_predictor_v2_scores_as_its_own_forward(tmp_path: Path, filename: str):
    torch.manual_seed(0)
    module = aesthetic_v2()
    folder = write(module, tmp_path / "aesthetic", filename)
    assert sorted(module.state_dict()) == [
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("bias", "weight")
    ]
    head = load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(folder)))
    x = normalised(50, 768)
    assert head.input == "embedding" and head.embedding_dim == 768
    scores = head.score_embeddings(x)
    assert scores.shape == (50,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference(module, x), rtol=1e-4, atol=1e-5)
    assert np.std(scores) > 0  # random weights still spread the scores: a real comparison


def test_aesthetic_predictor_from_s3_is_cached_and_pinned(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    torch.manual_seed(1)
    module = aesthetic_v2()
    uri = upload(write(module, tmp_path / "local", "sac+logos+ava1-l14-linearMSE.pth"), "aesthetic-v2")
    spec = HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=uri)
    head = load_head(spec, storage_options=s3fs_storage_options, cache_dir=tmp_path / "cache")
    x = normalised(8, 768, seed=3)
    np.testing.assert_allclose(head.score_embeddings(x), reference(module, x), rtol=1e-4, atol=1e-5)
    copies = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(copies) == 1 and copies[0].name.endswith(head.identity)
    again = load_head(
        spec, storage_options=s3fs_storage_options, identity=head.identity, cache_dir=tmp_path / "cache"
    )
    assert again.identity == head.identity


def test_relu_variant_and_v1_linear_head(tmp_path: Path):
    torch.manual_seed(2)
    relu = aesthetic_v2_relu(512)
    linear = nn.Linear(768, 1)  # aesthetic-predictor's sa_0_4_vit_l_14_linear.pth: keys weight, bias
    relu_folder = write(relu, tmp_path / "relu", "ava+logos-l14-reluMSE.pth")
    linear_folder = write(linear, tmp_path / "v1", "sa_0_4_vit_l_14_linear.pth")
    relu_head = load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(relu_folder)))
    linear_head = load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(linear_folder)))
    x512, x768 = normalised(20, 512), normalised(20, 768)
    np.testing.assert_allclose(relu_head.score_embeddings(x512), reference(relu, x512), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        linear_head.score_embeddings(x768), reference(linear, x768), rtol=1e-4, atol=1e-6
    )


def test_nsfw_detector_scores_its_probability(tmp_path: Path):
    torch.manual_seed(3)
    module = NSFWL14()
    folder = write(module, tmp_path / "nsfw", "clip_ViT-L-14_openai_binary_nsfw_head.pth")
    spec = HeadSpec(name="nsfw", kind="laion_nsfw", uri=str(folder))
    assert spec.column == "punsafe"
    head = load_head(spec)
    x = normalised(30, 768)
    scores = head.score_embeddings(x)
    np.testing.assert_allclose(scores, reference(module, x), rtol=1e-4, atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_raw_features_are_normalised_first(tmp_path: Path):
    torch.manual_seed(4)
    module = aesthetic_v2(64)
    head = load_head(
        HeadSpec(name="a", kind="laion_aesthetic", uri=str(write(module, tmp_path / "a", "a.pth")))
    )
    x = normalised(10, 64)
    np.testing.assert_allclose(head.score_embeddings(x * 7.5), head.score_embeddings(x), rtol=1e-5, atol=1e-7)


def test_a_record_scores_the_same_alone_or_in_a_batch(tmp_path: Path):
    torch.manual_seed(5)
    head = load_head(HeadSpec(name="a", kind="laion_aesthetic",
                              uri=str(write(aesthetic_v2(), tmp_path / "a", "a.pth"))))  # fmt: skip
    x = normalised(64, 768)
    batch = head.score_embeddings(x)
    alone = np.concatenate([head.score_embeddings(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(batch, alone)


def test_wrong_kind_unknown_layout_and_wrong_size_are_named(tmp_path: Path):
    folder = write(NSFWL14(), tmp_path / "nsfw", "nsfw.pth")
    with pytest.raises(
        HeadError, match=r"nsfw-detector layout, which is kind 'laion_nsfw', not 'laion_aesthetic'"
    ):
        load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(folder)))
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"fc.weight": torch.zeros(1, 8), "fc.bias": torch.zeros(1)}, other / "head.pth")
    with pytest.raises(
        HeadError, match=r"not a published LAION head layout .* its tensors: fc.bias, fc.weight"
    ):
        load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(other)))
    head = load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic",
                              uri=str(write(aesthetic_v2(), tmp_path / "a", "a.pth"))))  # fmt: skip
    with pytest.raises(
        HeadError, match=r"head 'aesthetic' takes embeddings of size 768, got .* shape \(4, 32\)"
    ):
        head.score_embeddings(np.zeros((4, 32), np.float32))


def test_missing_folder_and_two_weight_files(tmp_path: Path):
    with pytest.raises(HeadError, match=f"head 'aesthetic': no head folder at {tmp_path / 'absent'}"):
        load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(tmp_path / "absent")))
    folder = write(aesthetic_v2(16), tmp_path / "two", "a.pth")
    torch.save(aesthetic_v2(16).state_dict(), folder / "b.pth")
    with pytest.raises(HeadError, match=r"several weight files \(a.pth, b.pth\)"):
        load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(folder)))


def test_an_unreadable_weights_file_is_named(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"<!DOCTYPE html><html>not a model")
    with pytest.raises(HeadError, match=r"cannot read weights .*sac\+logos\+ava1-l14-linearMSE.pth: "):
        load_head(HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(tmp_path / "a")))
