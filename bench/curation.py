"""Curation heads benchmark: how well the shapes family's score heads judge, and what the heads cost.

    python bench/curation.py                                  # quality + cost, shapes and full size
    python bench/curation.py --samples 2048 --records 256 --full-size-records 16 --json bench-curation.json
    python bench/curation.py --no-full-size                   # skip the ViT-L/14-sized cost (needs ~6 GB RAM)

Quality, on fresh scenes of the ``val`` split (seen shape-colour pairs) and the ``heldout`` split (every
scene holds a pair never seen in training): the Spearman rank correlation of the ``aesthetic`` head with the
property it learns (``shapes.heads.composition_score``), and the ROC AUC of the ``not_safe`` head for scenes
that hold a red square, both through the pipeline's head loader on the score stage's embeddings.

Cost: the extra time per record the heads take, as a ratio to the CLIP stage alone (the pipeline's
``ClipScoreStage``: image and text embedding of the same records and their cosine), median of ``--repeats``:

- *shapes*: the family's CLIP (64 px, 32-dim embeddings) and its two shipped heads;
- *full size*: a CLIP of ViT-L/14's sizes (random weights: the cost does not depend on them; 224 px,
  768-dim) with LAION's published head layouts (aesthetic predictor v2, the ViT-L-14 NSFW detector; random
  weights) and, as an image head, a ViT-B/16 image classifier at 224 px (the size of commonly published NSFW
  and watermark classifiers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.heads import HeadSpec, ImageHead, ScoreHead, load_head
from pipelines.pixels import to_bytes
from pipelines.stages.score import ClipScoreStage
from shapes.clip import roc_auc
from shapes.heads import composition_score, is_not_safe, spearman
from shapes.world import ShapesWorld

MODEL = Path("models/unidiffuser-shapes")
HEADS = Path("models/unidiffuser-shapes-heads")


def clip_stage(clip: Path, batch_size: int) -> ClipScoreStage:
    config = PipelineConfig.model_validate({
        "input": {"kind": "prompts", "uri": "unused.txt"}, "model": {"checkpoint": str(MODEL), "mode": "t2i"},
        "clip": {"model": str(clip), "batch_size": batch_size}, "output": {"uri": "unused"},
    })  # fmt: skip
    return ClipScoreStage(config)


def records(world: ShapesWorld, split: str, start: int, count: int) -> tuple[pd.DataFrame, list]:
    """A score-stage batch of world samples (as generated t2i records) and the samples."""
    samples = [world.sample(i, split) for i in range(start, start + count)]
    captions = [s.caption for s in samples]
    batch = pd.DataFrame({
        r.STATUS: [r.Status.OK.value] * count, r.REASON: [None] * count,
        r.OUT_PIXELS: [to_bytes(s.image) for s in samples],
        r.TEXT: captions, r.PROMPT: captions, r.PIXELS: [None] * count,
    })  # fmt: skip
    return batch, samples


def quality(stage: ClipScoreStage, heads: dict[str, ScoreHead], world: ShapesWorld, samples: int) -> dict:
    out = {}
    for split in ("val", "heldout"):
        batch, drawn = records(world, split, 10_000, samples)  # indices far from any the tests use
        embeddings = np.array(stage(batch)[r.IMAGE_EMBEDDING].tolist(), np.float32)
        composition = np.array([composition_score(s.image) for s in drawn])
        unsafe = np.array([is_not_safe(s.scene) for s in drawn])
        aesthetic = heads["aesthetic"].score_embeddings(embeddings)
        not_safe = heads["not_safe"].score_embeddings(embeddings)
        out[split] = {
            "samples": samples,
            "aesthetic_spearman": round(spearman(aesthetic, composition), 4),
            "aesthetic_mae": round(float(np.abs(aesthetic - composition).mean()), 4),
            "not_safe_auc": round(roc_auc(not_safe[unsafe], not_safe[~unsafe]), 4),
            "not_safe_positives": int(unsafe.sum()),
            "not_safe_positive_rate_at_0.5": round(float((not_safe[~unsafe] > 0.5).mean()), 4),
            "not_safe_recall_at_0.5": round(float((not_safe[unsafe] > 0.5).mean()), 4),
            "not_safe_positive_rate_at_0.3": round(float((not_safe[~unsafe] > 0.3).mean()), 4),
            "not_safe_recall_at_0.3": round(float((not_safe[unsafe] > 0.3).mean()), 4),
        }
    return out


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost(
    stage: ClipScoreStage, heads: dict[str, ScoreHead], batch: pd.DataFrame, images: list, repeats: int
) -> dict:
    """Seconds per record of the CLIP stage and of each head on the same records, and their ratios."""
    n = len(batch)
    embeddings = np.array(stage(batch)[r.IMAGE_EMBEDDING].tolist(), np.float32)
    clip = median_seconds(lambda: stage(batch), repeats) / n
    per_head = {}
    for name, head in heads.items():
        if isinstance(head, ImageHead):
            per_head[name] = median_seconds(partial(head.score_images, images), repeats) / n
        else:
            per_head[name] = median_seconds(partial(head.score_embeddings, embeddings), repeats) / n
    embedding_heads = sum(t for name, t in per_head.items() if heads[name].input == "embedding")
    return {
        "records": n,
        "clip_stage_ms_per_record": round(clip * 1e3, 4),
        "heads_ms_per_record": {k: round(v * 1e3, 4) for k, v in per_head.items()},
        "ratio_to_clip": {k: round(v / clip, 5) for k, v in per_head.items()},
        "embedding_heads_ratio_to_clip": round(embedding_heads / clip, 5),
    }


def shapes_heads() -> dict[str, ScoreHead]:
    return {name: load_head(HeadSpec(name=name, kind="mlp", uri=str(HEADS / name)))
            for name in ("aesthetic", "not_safe")}  # fmt: skip


def write_full_size(root: Path) -> tuple[Path, dict[str, HeadSpec]]:
    """A CLIP of ViT-L/14's sizes and three heads of published sizes, random weights, under ``root``."""
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(MODEL / "clip", local_files_only=True)
    text = {"vocab_size": len(tokenizer), "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    vision = {"image_size": 224, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
              "num_hidden_layers": 24, "num_attention_heads": 16}  # fmt: skip
    clip = root / "clip-l14"
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).save_pretrained(clip)
    tokenizer.save_pretrained(clip)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(clip)

    aesthetic = nn.Sequential(
        nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
        nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )  # fmt: skip
    (root / "aesthetic").mkdir()
    torch.save({f"layers.{k}": v for k, v in aesthetic.state_dict().items()},
               root / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth")  # fmt: skip
    nsfw = {"norm.mean": torch.zeros(768), "norm.variance": torch.ones(768)}
    for k, (a, b) in enumerate([(768, 64), (64, 512), (512, 256), (256, 1)], start=1):
        layer = nn.Linear(a, b)
        nsfw |= {f"linear_{k}.weight": layer.weight.detach(), f"linear_{k}.bias": layer.bias.detach()}
    (root / "nsfw").mkdir()
    torch.save(nsfw, root / "nsfw" / "clip_ViT-L-14_openai_binary_nsfw_head.pth")
    labels = {0: "clean", 1: "watermark"}
    vit = ViTConfig(
        image_size=224, patch_size=16, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    ViTForImageClassification(vit).save_pretrained(root / "watermark")
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(root / "watermark")
    specs = {
        "aesthetic": HeadSpec(name="aesthetic", kind="laion_aesthetic", uri=str(root / "aesthetic")),
        "nsfw": HeadSpec(name="nsfw", kind="laion_nsfw", uri=str(root / "nsfw")),
        "watermark": HeadSpec(
            name="watermark", kind="classifier", uri=str(root / "watermark"), label="watermark"
        ),
    }
    return clip, specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2048, help="scenes per split for the quality figures")
    parser.add_argument("--records", type=int, default=256, help="records for the shapes cost figures")
    parser.add_argument("--full-size-records", type=int, default=16, help="records for the full-size cost")
    parser.add_argument("--no-full-size", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="clip.batch_size of the score stage")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench-curation.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = ShapesWorld(json.loads((MODEL / "training_report.json").read_text())["seed"])
    stage = clip_stage(MODEL / "clip", args.batch_size)
    heads = shapes_heads()
    result: dict = {
        "platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(),
    }  # fmt: skip
    result["quality"] = quality(stage, heads, world, args.samples)
    print(json.dumps(result["quality"], indent=2), flush=True)
    batch, samples = records(world, "val", 20_000, args.records)
    result["cost_shapes"] = cost(stage, heads, batch, [s.image for s in samples], args.repeats)
    print(json.dumps(result["cost_shapes"], indent=2), flush=True)
    if not args.no_full_size:
        with tempfile.TemporaryDirectory() as tmp:
            clip, specs = write_full_size(Path(tmp))
            big_stage = clip_stage(clip, args.batch_size)
            big_heads = {name: load_head(spec) for name, spec in specs.items()}
            batch, samples = records(world, "val", 30_000, args.full_size_records)
            result["cost_full_size"] = cost(
                big_stage, big_heads, batch, [s.image for s in samples], args.repeats
            )
        print(json.dumps(result["cost_full_size"], indent=2), flush=True)
    result["load_average_at_end"] = os.getloadavg()
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
