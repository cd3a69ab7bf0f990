"""``unidiffuser-engine``: the engine's own commands (no Ray): tiny checkpoints, conversion, sampling a folder.

unidiffuser-engine tiny-checkpoint ./tiny --version 1
unidiffuser-engine convert --uvit uvit_v1.pth ... --out ./unidiffuser-v1
unidiffuser-engine sample ./tiny --out ./samples            # every mode, a few records each
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from unidiffuser.checkpoint import checkpoint_identity
from unidiffuser.config import EngineConfig, Mode
from unidiffuser.convert import convert_checkpoint
from unidiffuser.engine import UniDiffuserEngine
from unidiffuser.marks.marking import mark_image
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.results import Result
from unidiffuser.tiny import CheckpointSizes, write_random_checkpoint, write_tiny_checkpoint

DEMO_PROMPTS = ["a red circle on a grey background", "a small blue square at the top left", "   "]


def _tiny(args: argparse.Namespace) -> int:
    if args.full_size:
        sizes = CheckpointSizes.full(args.version)
        path = write_random_checkpoint(args.out, sizes, seed=args.seed)
        print(f"full-size random v{args.version} checkpoint ({sizes.resolution} px) written to {path}")
        return 0
    path = write_tiny_checkpoint(args.out, version=args.version, seed=args.seed)
    print(f"tiny v{args.version} checkpoint written to {path}")
    return 0


def _save(result: Result, folder: Path, name: str, marks: SampleMarks) -> dict:
    """Write the record's images (each marked with its generation record) and return its report entry."""
    entry: dict = {"name": name, "error": result.error, "flags": result.flags, "text": result.text}
    images = ([result.image] if result.image is not None else []) + list(result.frames or [])
    for hop_index, hop in enumerate(result.hops or []):
        if hop.image is not None:
            images.append(hop.image)
        entry.setdefault("hops", []).append(hop.text if hop.text is not None else f"image {hop_index}")
    entry["images"] = []
    for i, image in enumerate(images):
        path = folder / f"{name}-{i}.png"
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        path.write_bytes(mark_image(buffer.getvalue(), "png", marks.record(f"{name}-{i}")))
        entry["images"].append(path.name)
    return entry


@dataclass(frozen=True)
class SampleMarks:
    """The generation record of one ``sample`` call's images (every image it writes is marked)."""

    config: EngineConfig
    checkpoint: str
    version: str
    mode: str
    prompt: str | None
    seed: int

    def record(self, key: str) -> GenerationRecord:
        return GenerationRecord(
            software="unidiffuser-batch",
            software_version=_version(),
            model_id=self.checkpoint,
            model_version=self.version,
            mode=self.mode,
            prompt=self.prompt,
            seed=self.seed,
            steps=self.config.steps,
            guidance_scale=self.config.guidance_scale,
            cfg_mode=self.config.t2i_cfg_mode,
            data_type=self.config.data_type,
            dtype=self.config.dtype,
            job="unidiffuser-engine sample",
            key=key,
        )


def _version() -> str:
    try:
        return metadata.version("unidiffuser-batch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sample(args: argparse.Namespace) -> int:
    config = EngineConfig.build(
        steps=args.steps, guidance_scale=args.guidance, device=args.device, dtype=args.dtype
    )
    engine = UniDiffuserEngine.from_pretrained(args.checkpoint, config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (engine.resolution, engine.resolution, 3), dtype=np.uint8)
    other = np.ascontiguousarray(image[::-1])
    version = checkpoint_identity(args.checkpoint)
    prompts: dict[Mode, list[str | None]] = {
        Mode.T2I: list(DEMO_PROMPTS),
        Mode.T2I2T: [DEMO_PROMPTS[0]],
        Mode.CHAIN: [None, DEMO_PROMPTS[0]],
    }
    calls = {
        Mode.T2I: lambda: engine.t2i(DEMO_PROMPTS, seeds=[1, 2, 3]),
        Mode.I2T: lambda: engine.i2t([image, b"not an image"], seeds=[1, 2]),
        Mode.JOINT: lambda: engine.joint(seeds=[1, 2]),
        Mode.IMAGE: lambda: engine.image(seeds=[1]),
        Mode.TEXT: lambda: engine.text(seeds=[1]),
        Mode.I2T2I: lambda: engine.i2t2i([image], seeds=[1]),
        Mode.T2I2T: lambda: engine.t2i2t(DEMO_PROMPTS[:1], seeds=[1]),
        Mode.CHAIN: lambda: engine.chain([image, DEMO_PROMPTS[0]], seeds=[1, 2], hops=3),
        Mode.INTERPOLATE: lambda: engine.interpolate([(image, other)], seeds=[1], frames=4),
    }
    selected = [Mode(m) for m in args.modes] if args.modes else list(calls)
    report: dict[str, list[dict]] = {}
    for mode in selected:
        results = calls[mode]()
        report[mode.value] = []
        for i, result in enumerate(results):
            seed = i + 1  # the seeds of ``calls``: 1, 2, ... per mode
            prompt = prompts.get(mode, [None] * len(results))[i]
            marks = SampleMarks(config, str(args.checkpoint), version, mode.value, prompt, seed)
            report[mode.value].append(_save(result, out, f"{mode.value}-{i}", marks))
        ok = sum(r.ok for r in results)
        print(
            f"{mode.value:12s} {ok}/{len(results)} ok"
            + "".join(f"  [{r.error}]" for r in results if not r.ok)
        )
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"results in {out}/results.json")
    return 0


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convert`` sub-command's arguments."""
    parser.description = (
        "Convert thu-ml's original UniDiffuser files into a diffusers-layout checkpoint folder."
    )
    parser.add_argument("--uvit", required=True, help="uvit_v0.pth or uvit_v1.pth")
    parser.add_argument("--autoencoder", required=True, help="autoencoder_kl.pth")
    parser.add_argument("--caption-decoder", required=True, help="caption_decoder.pth")
    parser.add_argument("--clip-text", required=True, help="local copy of openai/clip-vit-large-patch14")
    parser.add_argument("--clip-image", required=True, help="local copy of openai/clip-vit-base-patch32")
    parser.add_argument("--gpt2-tokenizer", required=True, help="local copy of the gpt2 tokenizer files")
    parser.add_argument("--out", required=True, help="output folder (diffusers layout)")
    parser.add_argument(
        "--version", type=int, choices=(0, 1), default=None, help="default: read from the U-ViT"
    )
    parser.add_argument(
        "--num-attention-heads", type=int, default=None, help="U-ViT heads (default: width / 64)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def _convert(args: argparse.Namespace) -> int:
    """Run the conversion; 0 on success, 1 with a message on stderr on bad inputs."""
    try:
        path = convert_checkpoint(
            uvit=args.uvit,
            autoencoder=args.autoencoder,
            caption_decoder=args.caption_decoder,
            clip_text_model=args.clip_text,
            clip_image_model=args.clip_image,
            gpt2_tokenizer=args.gpt2_tokenizer,
            output_dir=args.out,
            version=args.version,
            num_attention_heads=args.num_attention_heads,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidiffuser-engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser(
        "tiny-checkpoint", help="write a tiny random checkpoint (diffusers layout), offline"
    )
    tiny.add_argument("out", help="output folder")
    tiny.add_argument("--version", type=int, choices=(0, 1), default=1)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--full-size",
        action="store_true",
        help="UniDiffuser-v1's sizes instead (U-ViT-H, 512 px; ~5 GB): GPU benchmarks and memory checks",
    )
    tiny.set_defaults(func=_tiny)

    sample = sub.add_parser("sample", help="run every mode on a few built-in inputs and save the results")
    sample.add_argument("checkpoint", help="checkpoint folder or fsspec URI")
    sample.add_argument("--out", required=True)
    sample.add_argument("--modes", nargs="*", choices=[m.value for m in Mode])
    sample.add_argument("--steps", type=int, default=20)
    sample.add_argument("--guidance", type=float, default=7.0)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    sample.set_defaults(func=_sample)

    convert = sub.add_parser("convert", help="convert original thu-ml .pth files to the diffusers layout")
    _add_convert_arguments(convert)
    convert.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
