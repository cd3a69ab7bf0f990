"""Engine benchmark: our engine and diffusers' UniDiffuserPipeline side by side, in one run, same settings.

    python bench/engine.py                        # CPU, tiny checkpoint (written to a temp folder)
    python bench/engine.py --checkpoint PATH      # any diffusers-layout checkpoint
    python bench/engine.py --full-size --uvit-h --device cuda --dtype bfloat16   # GPU: UniDiffuser-v1 sizes

Prints outputs/s for each side and the ratio, for t2i, i2t and joint. ``--full-size`` writes a random
checkpoint with UniDiffuser-v1's dimensions (U-ViT-H, SD VAE, CLIP L/14 + B/32, GPT-2 small; ~5 GB, 512 px)
instead of the tiny one; on CUDA the peak GPU memory of our engine per mode is printed too. ``--uvit-h``
adds the U-ViT-H forward's MFU (FLOPs counted from the config over measured time, against the card's
measured matmul rate in the same dtype).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unidiffuser import UniDiffuserEngine, write_tiny_checkpoint
from unidiffuser.components import load_components
from unidiffuser.tiny import CheckpointSizes, uvit_h_config, write_random_checkpoint
from unidiffuser.uvit import UViT

UVIT_H = uvit_h_config(version=1)


def reference_pipeline(path: Path, device: str, dtype: torch.dtype):
    """diffusers' (deprecated) pipeline on the same checkpoint: used here only as the baseline."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DPMSolverMultistepScheduler
        from diffusers.pipelines.deprecated.unidiffuser import (
            UniDiffuserModel,
            UniDiffuserPipeline,
            UniDiffuserTextDecoder,
        )

        c = load_components(path)
        pipe = UniDiffuserPipeline(
            vae=c.vae, text_encoder=c.text_encoder, image_encoder=c.image_encoder,
            clip_image_processor=c.clip_image_processor, clip_tokenizer=c.clip_tokenizer,
            text_decoder=UniDiffuserTextDecoder.from_pretrained(path / "text_decoder"),
            text_tokenizer=c.text_tokenizer, unet=UniDiffuserModel.from_pretrained(path / "unet"),
            scheduler=DPMSolverMultistepScheduler.from_config(c.scheduler_config),
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench_modes(path: Path, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    engine = UniDiffuserEngine.from_pretrained(
        path, steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch, device=args.device,
        dtype=args.dtype,
    )  # fmt: skip
    n = args.batch
    prompts = [f"a red circle number {i} on a grey background" for i in range(n)]
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (engine.resolution, engine.resolution, 3), dtype=np.uint8) for _ in range(n)
    ]
    pil_images = [Image.fromarray(i) for i in images]
    seeds = list(range(n))
    ours = {
        "t2i": lambda: engine.t2i(prompts, seeds),
        "i2t": lambda: engine.i2t(images, seeds),
        "joint": lambda: engine.joint(seeds),
    }
    # before the reference pipeline is loaded: the GPU then holds our engine alone
    peaks = peak_gpu_memory(ours) if torch.device(args.device).type == "cuda" else {}

    pipe = reference_pipeline(path, args.device, dtype)
    gen = lambda: torch.Generator(args.device).manual_seed(0)  # noqa: E731
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "output_type": "np"}
    theirs = {
        "t2i": lambda: pipe(prompt=prompts, generator=gen(), **common),
        # the pipeline captions one PIL image per call
        "i2t": lambda: [pipe(image=im, generator=gen(), **common) for im in pil_images],
        "joint": lambda: (pipe.set_joint_mode(), pipe(num_images_per_prompt=n, num_prompts_per_image=n, generator=gen(), **common)),
    }  # fmt: skip
    rows = {}
    for mode in ours:
        t_ours, t_ref = timed(ours[mode], args.repeats), timed(theirs[mode], args.repeats)
        rows[mode] = {
            "ours_outputs_per_s": n / t_ours,
            "diffusers_outputs_per_s": n / t_ref,
            "speedup": t_ref / t_ours,
            "ours_peak_gpu_gib": peaks.get(mode),
        }
        memory = f"   ours peak GPU memory {peaks[mode]:.1f} GiB" if mode in peaks else ""
        print(
            f"{mode:6s} ours {n / t_ours:8.2f}/s   diffusers {n / t_ref:8.2f}/s   ratio {t_ref / t_ours:5.2f}x"
            + memory
        )
    return rows


def peak_gpu_memory(calls: dict) -> dict[str, float]:
    """Peak allocated GPU memory (GiB, weights included) of one run of each call."""
    peaks = {}
    for mode, call in calls.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() / 2**30
    return peaks


def matmul_rate(device: str, dtype: torch.dtype, size: int = 8192) -> float:
    """Measured dense matmul FLOP/s of this device in ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 10)
    return 2 * size**3 / seconds


def bench_mfu(args: argparse.Namespace) -> dict:
    """U-ViT-H forward throughput and MFU at the benchmark batch (CFG doubles the rows)."""
    dtype = getattr(torch, args.dtype)
    model = UViT(UVIT_H).to(args.device, dtype).eval()
    model.fuse_qkv()
    forward = torch.compile(model) if args.compile else model
    rows = 2 * args.batch
    cfg = UVIT_H
    x = torch.randn(rows, 4, 64, 64, device=args.device, dtype=dtype)
    clip = torch.randn(rows, 1, cfg.clip_img_dim, device=args.device, dtype=dtype)
    text = torch.randn(rows, 77, cfg.text_dim, device=args.device, dtype=dtype)
    t = torch.full((rows,), 500, device=args.device)
    data_type = torch.ones(rows, device=args.device, dtype=torch.long)
    with torch.no_grad():
        seconds = timed(lambda: forward(x, clip, text, t, t, data_type), args.repeats * 5)
    flops = model.forward_flops(rows)
    peak = matmul_rate(args.device, dtype)
    result = {"rows": rows, "forward_s": seconds, "tflops": flops / seconds / 1e12, "peak_tflops": peak / 1e12,
              "mfu": flops / seconds / peak}  # fmt: skip
    print(f"U-ViT-H forward, {rows} rows: {seconds * 1e3:.1f} ms, {result['tflops']:.0f} TFLOP/s, "
          f"peak matmul {result['peak_tflops']:.0f} TFLOP/s, MFU {result['mfu']:.0%}")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="diffusers-layout checkpoint (default: a tiny one)")
    parser.add_argument(
        "--full-size", action="store_true", help="random checkpoint of UniDiffuser-v1's sizes (~5 GB, 512 px)"
    )
    parser.add_argument("--uvit-h", action="store_true", help="also measure the real U-ViT-H config's MFU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.checkpoint:
        path = args.checkpoint
    elif args.full_size:
        start = time.perf_counter()
        path = write_random_checkpoint(Path(tempfile.mkdtemp()) / "full", CheckpointSizes.full(version=1))
        print(f"wrote a full-size random checkpoint in {time.perf_counter() - start:.0f} s")
    else:
        path = write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny", version=1)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {args.device}, dtype {args.dtype}, batch {args.batch}, steps {args.steps}")  # fmt: skip
    report = {"modes": bench_modes(path, args), "args": {k: str(v) for k, v in vars(args).items()}}
    if torch.cuda.is_available():
        report["device_name"] = torch.cuda.get_device_name()
    if args.uvit_h:
        report["uvit_h"] = bench_mfu(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
