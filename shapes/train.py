"""Train the whole shapes-world UniDiffuser family, in order, with fixed seeds, and save it as a checkpoint.

    python -m shapes.train --out models/unidiffuser-shapes --seed 0 [--quick]

Parts: (a) VAE (on the world's ``codec`` images: every shape-colour pair, no captions), (b) CLIP (text
encoder, image encoder and the pipeline's scorer), (c) GPT-2 caption decoder, (d) U-ViT with the UniDiffuser
objective; (b)-(d) see the ``train`` split only. Each is saved as soon as it is trained; ``model_index.json`` and
``training_report.json`` (losses, time per part, seed, config) are written last. The folder has the layout of
``unidiffuser.tiny.write_tiny_checkpoint`` plus ``clip/``, and loads with ``UniDiffuserEngine.from_pretrained``.
Uses the GPU when there is one. ``--quick`` is a seconds-long smoke run (tiny models, a few steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# OpenMP threads that spin while waiting are many times slower when another process holds a core (a shared
# CI machine); this only takes effect if torch is not imported yet (as with ``python -m``).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from shapes import export
from shapes.caption import CaptionConfig, evaluate_decoder, train_caption_decoder
from shapes.clip import (
    CLIPTrainConfig,
    image_embeddings,
    split_towers,
    text_hidden_states,
    train_clip,
)
from shapes.common import WorldData, images_to_unit, pick_device, seed_everything
from shapes.detector import detect
from shapes.diffusion import Latents, UViTTrainConfig, train_uvit
from shapes.tokenizers import world_clip_tokenizer, world_gpt2_tokenizer
from shapes.vae import VAEConfig, encode_posteriors, train_vae
from shapes.world import RESOLUTION, ShapesWorld
from unidiffuser.components import load_caption_decoder
from unidiffuser.tiny import scheduler_config

log = logging.getLogger("shapes")


@dataclass
class FamilyConfig:
    train_samples: int = 16384
    val_samples: int = 512
    text_tokens: int = 32  # CLIP context = the U-ViT's text tokens (the world's captions need at most 27)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPTrainConfig = field(default_factory=CLIPTrainConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    uvit: UViTTrainConfig = field(default_factory=UViTTrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def full_config() -> FamilyConfig:
    return FamilyConfig()


def quick_config() -> FamilyConfig:
    """Same pipeline, tiny models and a few steps: a smoke run of seconds."""
    return FamilyConfig(
        train_samples=128,
        val_samples=32,
        vae=VAEConfig(block_out_channels=(8, 8, 8, 8), steps=3, batch_size=8),
        clip=CLIPTrainConfig(
            hidden_size=32,
            intermediate_size=64,
            text_layers=1,
            vision_layers=1,
            heads=2,
            projection_dim=8,
            patch_size=16,
            steps=3,
            batch_size=16,
        ),  # fmt: skip
        caption=CaptionConfig(n_embd=32, n_layer=1, n_head=2, text_dim=4, steps=3, batch_size=16),
        uvit=UViTTrainConfig(width=32, num_layers=3, heads=2, steps=3, batch_size=16, warmup=2),
    )


def apply_overrides(cfg: FamilyConfig, overrides: list[str]) -> FamilyConfig:
    """``part.field=value`` (or ``field=value`` for top-level fields), values parsed as JSON where possible."""
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target, name = cfg, key
        if "." in key:
            part, name = key.split(".", 1)
            target = getattr(cfg, part)
        if not hasattr(target, name):
            raise SystemExit(f"unknown config key: {key}")
        if isinstance(getattr(target, name), tuple):
            value = tuple(value)
        setattr(target, name, value)
    return cfg


def _part_seed(seed: int, part: str) -> int:
    return seed * 1000 + {"vae": 1, "clip": 2, "caption": 3, "uvit": 4}[part]


@torch.no_grad()
def _vae_detection_rate(vae, world: ShapesWorld, device, count: int) -> float:
    """Share of held-out images whose reconstruction the pixel detector reads exactly as the ground truth."""
    images, _, scenes = world.batch("heldout", 0, count)
    recon = vae.decode(vae.encode(images_to_unit(images).to(device)).latent_dist.mean).sample.float().cpu()
    pixels = ((recon / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    hits = 0
    for image, scene in zip(pixels, scenes, strict=True):
        found = sorted((o.shape, o.colour, o.size, o.position) for o in detect(image).objects)
        hits += found == sorted((o.shape, o.colour, o.size, o.position) for o in scene.objects)
    return hits / count


def train_family(
    out: Path,
    seed: int = 0,
    *,
    quick: bool = False,
    device: str | None = None,
    overrides: Sequence[str] = (),
    reuse: tuple[str, ...] = (),
) -> dict:
    """Train and save every part; returns the training report (also written to ``training_report.json``).

    ``reuse`` (a development aid) loads the named parts (``vae``, ``clip``, ``caption``) from ``out`` instead
    of training them again; their report entries are carried over from the previous report."""
    started = time.monotonic()
    cfg = apply_overrides(quick_config() if quick else full_config(), list(overrides))
    dev = pick_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if reuse and (out / "training_report.json").exists():
        previous = json.loads((out / "training_report.json").read_text()).get("parts", {})
    (out / "model_index.json").unlink(missing_ok=True)  # incomplete until the end
    report: dict = {
        "seed": seed,
        "quick": quick,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "config": cfg.to_dict(),
        "parts": {},
    }

    t0 = time.monotonic()
    world = ShapesWorld(seed)
    train = WorldData.draw(world, cfg.train_samples, "train")
    val = WorldData.draw(world, cfg.val_samples, "val")
    codec = WorldData.draw(world, cfg.train_samples, "codec")  # the autoencoder's images (every pair)
    clip_tokenizer = world_clip_tokenizer(cfg.text_tokens)
    gpt2_tokenizer = world_gpt2_tokenizer()
    export.save_tokenizers(out, clip_tokenizer, gpt2_tokenizer)
    report["parts"]["data"] = {"seconds": round(time.monotonic() - t0, 1), "train": len(train), "val": len(val),
                               "codec": len(codec),
                               "clip_vocab": len(clip_tokenizer), "gpt2_vocab": len(gpt2_tokenizer),
                               "held_out_pairs": [list(p) for p in world.held_out_pairs]}  # fmt: skip
    log.info("data: %d train / %d val samples (%.0fs)", len(train), len(val), time.monotonic() - t0)

    # (a) VAE
    if "vae" in reuse:
        vae = AutoencoderKL.from_pretrained(out / "vae").to(dev).eval()
        vae_report = {**previous.get("vae", {}), "reused": True}
    else:
        vae, vae_report = train_vae(codec.images, cfg.vae, dev, seed_everything(_part_seed(seed, "vae")))
        vae_report["heldout_reconstruction_detected"] = _vae_detection_rate(
            vae, world, dev, 64 if quick else 256
        )
        export.save_vae(out, vae)
    vae.to(dev)
    report["parts"]["vae"] = vae_report
    log.info("vae: %s", {k: v for k, v in vae_report.items() if k not in ("curve", "config")})

    # (b) CLIP
    if "clip" in reuse:
        text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder").to(dev).eval()
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(out / "image_encoder").to(dev).eval()
        clip_report = {**previous.get("clip", {}), "reused": True}
    else:
        clip, clip_report = train_clip(
            train.images, train.captions, clip_tokenizer, cfg.clip, dev,
            seed_everything(_part_seed(seed, "clip")), val=(val.images, val.captions),
        )  # fmt: skip
        text_encoder, raw_image_encoder = split_towers(clip)
        raw = image_embeddings(raw_image_encoder.to(dev), train.images[:2048], dev)
        image_scale = float(1.0 / raw.std())
        text_encoder, image_encoder = split_towers(clip, image_scale)
        clip_report["image_embedding_scale"] = image_scale
        export.save_clip(out, clip, text_encoder, image_encoder, clip_tokenizer, RESOLUTION)
    report["parts"]["clip"] = clip_report
    log.info("clip: %s", {k: v for k, v in clip_report.items() if k not in ("curve", "config")})

    # (c) caption decoder on the frozen CLIP text encoder
    text_encoder.to(dev)
    hidden = text_hidden_states(text_encoder, clip_tokenizer, train.captions, dev)
    val_hidden = text_hidden_states(text_encoder, clip_tokenizer, val.captions, dev)
    if "caption" in reuse:
        decoder = load_caption_decoder(out).to(dev).eval()
        caption_report = {**previous.get("caption", {}), "reused": True}
    else:
        decoder, caption_report = train_caption_decoder(
            hidden, train.captions, gpt2_tokenizer, cfg.caption, dev,
            seed_everything(_part_seed(seed, "caption")), val=(val_hidden[:256], val.captions[:256]),
        )  # fmt: skip
        caption_report["val_noisy_0.3"] = evaluate_decoder(
            decoder, gpt2_tokenizer, val_hidden[:256], val.captions[:256], dev, noise=0.3
        )
        export.save_decoder(out, decoder)
    report["parts"]["caption"] = caption_report
    log.info("caption: %s", {k: v for k, v in caption_report.items() if k not in ("curve", "config")})

    # (d) U-ViT on the latents of the three encoders above
    t0 = time.monotonic()
    with torch.no_grad():
        vae_mean, vae_std = encode_posteriors(vae.to(dev).eval(), train.images, dev)
        clip_embeds = image_embeddings(image_encoder.to(dev), train.images, dev)
        text_latents = torch.cat([decoder.encode(h.to(dev)).float().cpu() for h in hidden.split(1024)])
    latents = Latents(vae_mean, vae_std, float(vae.config.scaling_factor), clip_embeds, text_latents)
    encode_seconds = time.monotonic() - t0
    uvit, uvit_report = train_uvit(
        latents, cfg.uvit, scheduler_config(), dev, seed_everything(_part_seed(seed, "uvit"))
    )
    uvit_report["encode_seconds"] = round(encode_seconds, 1)
    uvit_report["latent_std"] = {
        "vae": float((vae_mean * vae.config.scaling_factor).std()),
        "clip": float(clip_embeds.std()),
        "text": float(text_latents.std()),
    }
    export.save_uvit(out, uvit)
    report["parts"]["uvit"] = uvit_report
    log.info(
        "uvit: %s", {k: v for k, v in uvit_report.items() if k not in ("curve", "config", "uvit_config")}
    )

    export.save_scheduler(out, scheduler_config())
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["checkpoint_bytes"] = export.folder_size(out)
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    export.save_model_index(out)
    log.info("done in %.0fs: %s (%.1f MB)", report["total_seconds"], out, report["checkpoint_bytes"] / 1e6)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("models/unidiffuser-shapes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (tiny models)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PART.FIELD=VALUE",
        help="override a config value, e.g. --set uvit.steps=500 (repeatable)",
    )
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        choices=("vae", "clip", "caption"),
        help="development aid: load these parts from --out instead of training them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_family(
        args.out,
        args.seed,
        quick=args.quick,
        device=args.device,
        overrides=args.overrides,
        reuse=tuple(args.reuse),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
