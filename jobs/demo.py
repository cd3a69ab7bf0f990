"""The embedded demo: writes tiny models, runs the shipped demo specs on local Ray (CPU), inspects them."""

from __future__ import annotations

from pathlib import Path

import ray

from jobs.inspect_output import inspect_output
from jobs.spec import load_spec
from pipelines.run import run_pipeline
from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

SPECS = Path(__file__).parent / "specs"
DEMO_SPECS = ("demo-t2i.yaml", "demo-captions.yaml")


def prepare_models(folder: Path) -> tuple[Path, Path]:
    """The demo's checkpoint and CLIP scorer (written once, offline)."""
    checkpoint, clip = folder / "unidiffuser-tiny", folder / "clip-tiny"
    if not (checkpoint / "model_index.json").exists():
        write_tiny_checkpoint(checkpoint, version=1)
    if not (clip / "config.json").exists():
        write_tiny_clip(clip)
    return checkpoint, clip


def run_demo(out: Path, *, quiet: bool = False) -> int:
    out = out.resolve()
    checkpoint, clip = prepare_models(out / "models")
    ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    for name in DEMO_SPECS:
        job = Path(name).stem.removeprefix("demo-")
        config = load_spec(
            SPECS / name,
            [f"model.checkpoint={checkpoint}", f"clip.model={clip}", f"output.uri={out / job}"],
        )
        report = run_pipeline(config, progress=not quiet)
        s = report.summary
        print(f"\n== {config.name}: {s['inputs']} inputs -> {s['written']} written, {s['rejected']} rejected, "
              f"{s['errored']} errored{'' if report.did_model_work else ' (already done: no model work)'}")  # fmt: skip
        print(inspect_output(str(out / job), samples=12)[0])
    print(f"\nshards, rejects, errors and contact sheets are under {out}")
    return 0
