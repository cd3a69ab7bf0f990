"""Quality benchmark of a shapes-world checkpoint: what the trained family has learned, on held-out combinations.

    python bench/quality.py                                   # models/unidiffuser-shapes, 32 samples, full grid
    python bench/quality.py --checkpoint PATH --samples 64 --guidance 1 3 7 --steps 10 25 50 --json out.json

Runs through the real ``UniDiffuserEngine`` (public API). The samples come from the world's ``heldout`` split
(every scene holds a shape-colour pair never seen in training). Judges that do not use the model under test:
the world's ground truth, the pixel detector and the caption parser; the CLIP ROC AUC uses the trained scorer.
Metrics (fractions; see ``shapes.quality``): i2t, t2i, joint, i2t2i, t2i2t and the CLIP AUCs, for
each guidance scale x steps. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path

import torch

from shapes.quality import MODES, EvalSet, evaluate, load, reference
from shapes.world import ShapesWorld

COLUMNS = ("i2t", "t2i", "joint", "i2t2i", "t2i2t", "clip_auc_t2i", "clip_auc_i2t")


def table(rows: list[dict]) -> str:
    header = f"{'guidance':>8} {'steps':>5} " + " ".join(f"{c:>12}" for c in COLUMNS) + f" {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = " ".join(f"{row[c]:>12.3f}" if c in row else f"{'-':>12}" for c in COLUMNS)
        lines.append(f"{row['guidance']:>8g} {row['steps']:>5d} {cells} {sum(row['seconds'].values()):>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="models/unidiffuser-shapes")
    parser.add_argument("--samples", type=int, default=32, help="held-out samples per setting")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--split", default="heldout", choices=("heldout", "val", "train"))
    parser.add_argument(
        "--world-seed", type=int, default=None, help="default: the seed the checkpoint was trained with"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench-quality.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    components, scorer = load(args.checkpoint)
    world_seed = args.world_seed
    report_path = Path(components.path) / "training_report.json"
    if world_seed is None:
        world_seed = json.loads(report_path.read_text())["seed"] if report_path.exists() else 0
    data = EvalSet.draw(ShapesWorld(world_seed), args.samples, args.split)
    ref = reference(data, scorer)
    print(f"checkpoint {args.checkpoint}: {args.samples} {args.split} samples (world seed {world_seed})")
    print("judges on the ground truth: " + ", ".join(f"{k}={v:.3f}" for k, v in ref.items()))

    rows = []
    started = time.monotonic()
    for guidance in args.guidance:
        for steps in args.steps:
            row = evaluate(
                components, data, guidance=guidance, steps=steps, modes=args.modes, scorer=scorer,
                device=args.device, batch_size=args.batch_size, seed=args.seed,
            )  # fmt: skip
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    result = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "samples": args.samples,
        "world_seed": world_seed,
        "sampling_seed": args.seed,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "reference": ref,
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
