"""Commit streaming: how soon a job's first unit is committed, and how evenly the others follow.

    python bench/commits.py                         # 10 000 prompts, shard_size 250, tiny model, default resources
    python bench/commits.py --prompts 2000 --shard-size 100

The job of the reliability report (issue 18): t2i over many prompts with the tiny random checkpoint and
``resources`` that fill this 2-CPU machine, CLIP off, parquet shards. Each unit's commit time is its marker's
mtime (``_units/{u}.json``, written last). Prints, from the run's start: the first commit, the last commit,
the run's end, and the spacing between consecutive commits (median and max). Resume is worth what is
committed: a crash at time t loses at most the units in flight, not everything before t.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from pipelines.config import PipelineConfig
from pipelines.run import run_pipeline
from unidiffuser.tiny import write_tiny_checkpoint


def measure(prompts: int, shard_size: int, steps: int) -> dict[str, float | int]:
    """Run the job once in a temporary folder; the commit times relative to the run's start."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = root / "model"
        write_tiny_checkpoint(checkpoint)
        (root / "prompts.txt").write_text("".join(f"a shape number {i}\n" for i in range(prompts)))
        config = PipelineConfig.model_validate(
            {
                "input": {"kind": "prompts", "uri": str(root / "prompts.txt")},
                "model": {"checkpoint": str(checkpoint), "mode": "t2i", "steps": steps},
                "output": {"uri": str(root / "out"), "formats": ["parquet"], "shard_size": shard_size},
                # the default resources need 3 CPUs (run refuses them on 2): one engine CPU, half a CPU each
                # for the writer and the read + preprocess task
                "resources": {"cpus_per_actor": 1, "writer_cpus": 0.5, "preprocess_cpus": 0.5},
            }
        )
        started = time.time()
        run_pipeline(config, progress=False)
        ended = time.time()
        commits = sorted(p.stat().st_mtime - started for p in (root / "out" / "_units").glob("*.json"))
    gaps = [b - a for a, b in zip(commits, commits[1:], strict=False)]
    return {
        "prompts": prompts,
        "units": len(commits),
        "first_commit_s": round(commits[0], 2),
        "last_commit_s": round(commits[-1], 2),
        "run_s": round(ended - started, 2),
        "median_spacing_s": round(statistics.median(gaps), 2) if gaps else 0.0,
        "max_spacing_s": round(max(gaps), 2) if gaps else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    ray.init(log_to_driver=False)
    figures = measure(args.prompts, args.shard_size, args.steps)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
