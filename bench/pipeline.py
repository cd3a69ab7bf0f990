"""Pipeline benchmark: the full Ray pipeline versus a plain Python loop over the same engine and data.

    python bench/pipeline.py                 # CPU: a wider random U-ViT so that the engine dominates
    python bench/pipeline.py --records 96 --steps 20 --width 256 --depth 13

Both sides: t2i on the same prompts and seeds, same engine settings, parquet shards written. The loop reads
the prompt file, runs the engine in micro-batches, encodes PNGs and writes one parquet file; the pipeline is
`pipelines.run.run_pipeline` (read -> preprocess -> engine actor -> write) on a local Ray started beforehand
(Ray's own start-up is not counted; the engine load is, on both sides). Prints records/s of each, the ratio
and Ray Data's per-stage time split.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from PIL import Image

from pipelines.config import PipelineConfig
from pipelines.run import run_pipeline
from unidiffuser import UniDiffuserEngine, derive_seed
from unidiffuser.tiny import tiny_uvit_config, write_tiny_checkpoint


def plain_loop(checkpoint: Path, prompts_file: Path, out: Path, *, steps: int, batch: int, seed: int) -> int:
    """The baseline: no Ray, one process, the same engine calls and the same output content."""
    engine = UniDiffuserEngine.from_pretrained(checkpoint, steps=steps, batch_size=batch)
    prompts = prompts_file.read_text().splitlines()
    keys = [f"prompts-{i:09d}" for i in range(len(prompts))]
    rows = []
    for start in range(0, len(prompts), batch):
        chunk = slice(start, start + batch)
        seeds = [derive_seed(seed, k) for k in keys[chunk]]
        for key, prompt, result in zip(
            keys[chunk], prompts[chunk], engine.t2i(prompts[chunk], seeds), strict=True
        ):
            buffer = io.BytesIO()
            Image.fromarray(result.image).save(buffer, format="PNG")
            rows.append({"key": key, "prompt": prompt, "image": buffer.getvalue()})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "loop.parquet")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=256, help="U-ViT width (heads x 64)")
    parser.add_argument("--depth", type=int, default=13, help="U-ViT num_layers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    base = tiny_uvit_config(1)
    uvit = replace(base, num_attention_heads=args.width // 64, attention_head_dim=64, num_layers=args.depth)
    checkpoint = write_tiny_checkpoint(work / "ckpt", uvit_config=uvit)
    prompts = work / "prompts.txt"
    prompts.write_text(
        "\n".join(f"a red circle number {i} on a grey background" for i in range(args.records)) + "\n"
    )

    start = time.perf_counter()
    written = plain_loop(checkpoint, prompts, work / "loop", steps=args.steps, batch=args.batch, seed=0)
    loop_s = time.perf_counter() - start

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = PipelineConfig.model_validate({
        "input": {"kind": "prompts", "uri": str(prompts)},
        "model": {"checkpoint": str(checkpoint), "mode": "t2i", "steps": args.steps},
        "output": {"uri": str(work / "pipeline"), "formats": ["parquet"], "shard_size": args.shard_size,
                   "image_format": "png"},
        "resources": {"batch_size": args.batch, "cpus_per_actor": 1, "writer_cpus": 0.5, "preprocess_cpus": 0.5},
    })  # fmt: skip
    start = time.perf_counter()
    report = run_pipeline(config, progress=False)
    pipeline_s = time.perf_counter() - start
    assert report.summary["written"] == written == args.records

    result = {
        "records": args.records,
        "loop_records_per_s": written / loop_s,
        "pipeline_records_per_s": written / pipeline_s,
        "ratio": loop_s / pipeline_s,
        "args": vars(args) | {"json": str(args.json)},
    }
    print(f"plain loop  {written / loop_s:7.2f} records/s ({loop_s:.1f} s)")
    print(
        f"ray pipeline {written / pipeline_s:6.2f} records/s ({pipeline_s:.1f} s)   ratio {loop_s / pipeline_s:.2f}"
    )
    print("per-stage time split (Ray Data stats):")
    print("\n".join(line for line in report.stats.splitlines() if "Operator" in line or "wall time" in line))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
