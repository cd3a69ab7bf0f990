"""Image-classifier heads: a tiny random ``ViTForImageClassification`` folder written here, loaded from S3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from pipelines.heads import HeadError, HeadSpec, load_head

LABELS = {0: "clean", 1: "watermark"}


def write_classifier(
    folder: Path, *, problem_type: str | None = None, seed: int = 0
) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
        problem_type=problem_type,
    )  # fmt: skip
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(n)]


def reference_logits(model: ViTForImageClassification, batch: list[np.ndarray]) -> torch.Tensor:
    """ViT's processor at the model size: no resize, pixels / 255, then (x - 0.5) / 0.5."""
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return model(pixel_values=(pixels - 0.5) / 0.5).logits


def test_classifier_from_s3_scores_its_label(
    tmp_path: Path, upload: Callable[[Path, str], str], s3fs_storage_options: dict
):
    model = write_classifier(tmp_path / "local")
    spec = HeadSpec(
        name="watermark", kind="classifier", uri=upload(tmp_path / "local", "wm"), label="watermark"
    )
    assert spec.column == "pwatermark"
    head = load_head(spec, storage_options=s3fs_storage_options, cache_dir=tmp_path / "cache", batch_size=3)
    assert head.input == "image"
    batch = images(7)
    scores = head.score_images(batch)
    expected = torch.softmax(reference_logits(model, batch), -1)[:, 1].numpy()
    assert scores.shape == (7,)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    clean = load_head(spec.model_copy(update={"label": "clean"}), storage_options=s3fs_storage_options,
                      identity=head.identity, cache_dir=tmp_path / "cache")  # fmt: skip
    np.testing.assert_allclose(clean.score_images(batch), 1 - scores, rtol=1e-4, atol=1e-5)
    assert head.score_images([]).shape == (0,)


def test_multi_label_classifier_uses_the_sigmoid(tmp_path: Path):
    model = write_classifier(tmp_path / "m", problem_type="multi_label_classification", seed=1)
    head = load_head(
        HeadSpec(name="watermark", kind="classifier", uri=str(tmp_path / "m"), label="watermark")
    )
    batch = images(4, seed=2)
    expected = torch.sigmoid(reference_logits(model, batch))[:, 1].numpy()
    np.testing.assert_allclose(head.score_images(batch), expected, rtol=1e-4, atol=1e-5)


def test_images_of_another_size_are_resized_by_the_processor(tmp_path: Path):
    write_classifier(tmp_path / "m")
    head = load_head(
        HeadSpec(name="watermark", kind="classifier", uri=str(tmp_path / "m"), label="watermark")
    )
    big = [np.full((64, 48, 3), 200, np.uint8), np.zeros((20, 20, 3), np.uint8)]
    small = [np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32, 3), np.uint8)]
    np.testing.assert_allclose(head.score_images(big), head.score_images(small), rtol=1e-4, atol=1e-5)


def test_unknown_label_names_it_and_lists_the_labels(tmp_path: Path):
    write_classifier(tmp_path / "m")
    spec = HeadSpec(name="watermark", kind="classifier", uri=str(tmp_path / "m"), label="watermarked")
    expected = (
        r"label 'watermarked' is not a label of the classifier at .*config.json \(labels: clean, watermark\)"
    )
    with pytest.raises(HeadError, match=expected):
        load_head(spec)


def test_missing_image_processor_is_named(tmp_path: Path):
    write_classifier(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").unlink()
    with pytest.raises(HeadError, match="no preprocessor_config.json"):
        load_head(HeadSpec(name="watermark", kind="classifier", uri=str(tmp_path / "m"), label="watermark"))
