"""Two small score heads for the shapes family, trained on its CLIP scorer's image embeddings.

    python -m shapes.heads --out models/unidiffuser-shapes-heads [--clip models/unidiffuser-shapes/clip]

Both are MLPs over the L2-normalised embedding of ``clip/``, computed exactly as the pipeline's score stage
computes it (``load_clip_processor``, ``get_image_features``, L2 normalisation), trained on the world's
``train`` images with fixed seeds (CPU, about a minute) and saved in the generic head format
(``pipelines.heads.mlp``: ``head.json`` + ``model.safetensors``, with a ``README.md``):

- ``aesthetic/``: a regressor of **composition**, ``composition_score``: how much of the frame's centre the
  objects fill, 0 (empty background) to 10 (the whole frame filled). Each object pixel counts with a Gaussian
  weight of its distance from the image centre (sigma a quarter of the side), over the same sum for a
  completely filled frame. Of the two properties a photographer would name first (a large, centred subject;
  strong contrast with the background) this is the one that varies *within* the world's attributes in a
  graded way (object size, position, shape and count all move it), while contrast is fixed by the colour and
  background pair alone (18 values). It is computed from the pixels only (the background colour is read off
  the border), so it also judges generated images.
- ``not_safe/``: a classifier of whether the scene contains a **red square** (``NOT_SAFE_PAIR``), a stand-in
  for NSFW content: a shape-colour pair of the ``train`` split (about 7 % of its scenes), so the head learns
  it from examples, as an NSFW detector does. Its score is a probability (LAION's ``punsafe``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see shapes/train.py

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from pipelines.heads.mlp import MLPHeadConfig, MLPNet, build_mlp, load_mlp_head, save_mlp_head
from shapes.clip import roc_auc
from shapes.common import Meter, batches, lr_at, seed_everything, set_lr
from shapes.quality import ClipScorer
from shapes.world import Scene, ShapesWorld

log = logging.getLogger("shapes")

NOT_SAFE_PAIR = ("square", "red")
COMPOSITION_SIGMA = 0.25  # of the image side
FOREGROUND_THRESHOLD = 40  # largest channel difference from the background that still counts as background


def _centre_weights(side: int) -> np.ndarray:
    centres = np.arange(side) + 0.5 - side / 2
    r2 = centres[None, :] ** 2 + centres[:, None] ** 2
    return np.exp(-r2 / (2 * (COMPOSITION_SIGMA * side) ** 2))


def composition_score(image: np.ndarray) -> float:
    """How much of the frame's centre a (H, W, 3) uint8 image's objects fill: 0 (empty) to 10 (filled)."""
    pixels = np.asarray(image, dtype=np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.abs(pixels - background).max(axis=-1) > FOREGROUND_THRESHOLD
    weights = _centre_weights(pixels.shape[0])
    return float(10 * (weights * foreground).sum() / weights.sum())


def is_not_safe(scene: Scene) -> bool:
    """Whether the scene holds the designated "not safe" object (``NOT_SAFE_PAIR``)."""
    return NOT_SAFE_PAIR in scene.pairs


def spearman(scores: np.ndarray, truth: np.ndarray) -> float:
    """Spearman rank correlation (ties ranked by their mean rank)."""
    return float(spearmanr(scores, truth).statistic)


@dataclass
class HeadTrainConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 1e-4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadsConfig:
    world_seed: int = 0
    seed: int = 0
    train_samples: int = 8192
    val_samples: int = 1024
    embed_batch_size: int = 256
    aesthetic: HeadTrainConfig = field(default_factory=HeadTrainConfig)
    not_safe: HeadTrainConfig = field(default_factory=lambda: HeadTrainConfig(hidden=[64]))


@dataclass
class Embedded:
    """One split's images as the heads see them, with what each head should say about them."""

    embeddings: np.ndarray
    composition: np.ndarray
    not_safe: np.ndarray  # bool

    @classmethod
    def draw(cls, scorer: ClipScorer, world: ShapesWorld, split: str, count: int, start: int = 0,
             batch_size: int = 256) -> Embedded:  # fmt: skip
        samples = [world.sample(i, split) for i in range(start, start + count)]
        images = [s.image for s in samples]
        return cls(
            scorer.image_embeddings(images, batch_size=batch_size),
            np.array([composition_score(i) for i in images]),
            np.array([is_not_safe(s.scene) for s in samples]),
        )


def _fit(config: MLPHeadConfig, x: torch.Tensor, y: torch.Tensor, cfg: HeadTrainConfig, loss_fn, name: str,
         generator: torch.Generator) -> tuple[MLPNet, dict]:  # fmt: skip
    net = build_mlp(config)
    net.row_stable = False  # plain matmuls while training (the scorer's row-stable forward is for scoring)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meter = Meter(name, cfg.steps)
    for step, index in enumerate(batches(len(x), cfg.batch_size, cfg.steps, generator)):
        set_lr(optimiser, lr_at(step, cfg.steps, cfg.lr, cfg.warmup))
        loss = loss_fn(net(x[index])[:, 0], y[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        meter.add(step, loss=loss.item())
    net.row_stable = True
    return net.eval(), {"loss": meter.final(), "curve": meter.curve, "seconds": round(meter.elapsed, 1)}


def train_aesthetic(
    data: Embedded, cfg: HeadTrainConfig, generator: torch.Generator
) -> tuple[MLPHeadConfig, MLPNet, dict]:
    """The composition regressor; trained on the standardised target, which the last layer then undoes."""
    config = MLPHeadConfig(
        input_dim=data.embeddings.shape[1], hidden=cfg.hidden, activation="relu", output="regression",
        description="shapes world: composition_score (0-10, how much of the frame's centre the objects fill)",
    )  # fmt: skip
    mean, std = float(data.composition.mean()), float(data.composition.std())
    y = torch.from_numpy((data.composition - mean) / std).float()
    net, report = _fit(config, torch.from_numpy(data.embeddings), y, cfg, F.mse_loss, "aesthetic", generator)
    with torch.no_grad():
        last = net.linears[-1]
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)
    return config, net, report | {"target_mean": mean, "target_std": std}


def train_not_safe(
    data: Embedded, cfg: HeadTrainConfig, generator: torch.Generator
) -> tuple[MLPHeadConfig, MLPNet, dict]:
    """The red-square classifier (one logit; the score is its sigmoid)."""
    config = MLPHeadConfig(
        input_dim=data.embeddings.shape[1], hidden=cfg.hidden, activation="relu", output="probability",
        description=f"shapes world: probability that the scene holds a {' '.join(NOT_SAFE_PAIR[::-1])}",
    )  # fmt: skip
    y = torch.from_numpy(data.not_safe.astype(np.float32))
    net, report = _fit(
        config,
        torch.from_numpy(data.embeddings),
        y,
        cfg,
        F.binary_cross_entropy_with_logits,
        "not_safe",
        generator,
    )
    return config, net, report | {"positives": int(data.not_safe.sum()), "samples": len(y)}


def evaluate(aesthetic, not_safe, data: Embedded) -> dict[str, float]:
    """Spearman of the aesthetic head against composition, ROC AUC of the not-safe head."""
    composition = aesthetic.score_embeddings(data.embeddings)
    unsafe = not_safe.score_embeddings(data.embeddings)
    return {
        "aesthetic_spearman": spearman(composition, data.composition),
        "aesthetic_mae": float(np.abs(composition - data.composition).mean()),
        "not_safe_auc": roc_auc(unsafe[data.not_safe], unsafe[~data.not_safe]),
        "not_safe_positives": int(data.not_safe.sum()),
        "samples": len(data.composition),
    }


README = """# {name}: a score head of the shapes family

{what}

- Format: the generic MLP head (`pipelines/heads/mlp.py`): `head.json` + `model.safetensors`
  (`{arch}`, output `{output}`, L2-normalised input).
- Input: the L2-normalised image embedding of `models/unidiffuser-shapes/clip` ({dim} numbers), as the
  pipeline's score stage computes it.
- Trained by `python -m shapes.heads --out models/unidiffuser-shapes-heads` (`shapes/heads.py`: why this
  property, how it is computed) on {train} `train` images of world seed {world_seed}, seed {seed}.
- Measured at training on {val} `val` images (new scenes): {metric}.
- `bench/curation.py` measures it on `val` and `heldout` scenes: see docs/benchmarks.md.
"""

WHAT = {
    "aesthetic": """\
A stand-in for LAION's aesthetic score: it predicts `composition_score`, how much of the frame's centre the
objects fill, from 0 (empty background) to 10 (the whole frame filled): object pixels weighted by a Gaussian
of their distance from the centre (sigma a quarter of the side). Large, centred subjects score high; small
objects in corners low. Why this property: a large, centred subject is the first thing a composition rule
asks for, and in this world it moves with every attribute of the objects (size, position, shape, count) in a
graded way, where contrast against the background is fixed by the colour-background pair alone. Spec: `kind:
mlp`, column `aesthetic`.""",
    "not_safe": """\
A stand-in for an NSFW detector (LAION's `punsafe`): the probability that the scene holds a red square, a
shape-colour pair seen in training (about 7 % of `train` scenes), so the head learns it from examples as an
NSFW detector does. Spec: `kind: mlp`, name `not_safe`, column `punsafe`.""",
}


def _readme(name: str, config: MLPHeadConfig, cfg: HeadsConfig, metrics: dict) -> str:
    arch = " -> ".join(str(d) for d in [config.input_dim, *config.hidden, config.output_dim])
    if name == "aesthetic":
        metric = (f"Spearman {metrics['aesthetic_spearman']:.3f} against `composition_score`, "
                  f"mean absolute error {metrics['aesthetic_mae']:.2f}")  # fmt: skip
    else:
        metric = f"ROC AUC {metrics['not_safe_auc']:.3f} ({metrics['not_safe_positives']} red-square scenes)"
    return README.format(
        name=name, what=WHAT[name], arch=arch, output=config.output, dim=config.input_dim,
        train=cfg.train_samples, world_seed=cfg.world_seed, seed=cfg.seed, val=cfg.val_samples, metric=metric,
    )  # fmt: skip


def train_heads(out: Path, clip: Path, cfg: HeadsConfig | None = None) -> dict:
    """Train both heads, save them under ``out/aesthetic`` and ``out/not_safe``; return the report (also
    written to ``out/training_report.json``)."""
    cfg = cfg or HeadsConfig()
    started = time.monotonic()
    scorer = ClipScorer(clip)
    world = ShapesWorld(cfg.world_seed)
    train = Embedded.draw(scorer, world, "train", cfg.train_samples, batch_size=cfg.embed_batch_size)
    val = Embedded.draw(scorer, world, "val", cfg.val_samples, batch_size=cfg.embed_batch_size)
    embed_seconds = time.monotonic() - started
    generator = seed_everything(cfg.seed)
    trained = {
        "aesthetic": train_aesthetic(train, cfg.aesthetic, generator),
        "not_safe": train_not_safe(train, cfg.not_safe, generator),
    }
    for name, (config, net, _) in trained.items():
        save_mlp_head(out / name, config, net.state_dict())
    heads = {name: load_mlp_head(out / name, name=name, identity="training") for name in trained}
    metrics = evaluate(heads["aesthetic"], heads["not_safe"], val)
    for name, (config, _, _) in trained.items():
        (out / name / "README.md").write_text(_readme(name, config, cfg, metrics))
    report = {
        "config": asdict(cfg),
        "clip": str(clip),
        "val": metrics,
        "parts": {name: part for name, (_, _, part) in trained.items()},
        "embed_seconds": round(embed_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("heads: val %s in %.0fs", metrics, report["total_seconds"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("models/unidiffuser-shapes-heads"))
    parser.add_argument("--clip", type=Path, default=Path("models/unidiffuser-shapes/clip"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_heads(args.out, args.clip, HeadsConfig(seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
