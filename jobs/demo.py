"""The embedded demo: runs the shipped demo specs on local Ray (CPU) with the trained shapes model, inspects
their outputs (counts, reasons, score histograms, contact sheet) and ends with ``verify``'s line for each (every
generated image marked, its record equal to its row; the captioning job's input images unmarked).

The default model is ``models/unidiffuser-shapes``: the small UniDiffuser family trained on the procedural
shapes world (``python -m shapes.train``), committed with the repository; its ``clip/`` folder is the
demo's CLIP scorer. ``--model tiny`` runs the same jobs on randomly initialised tiny models written on the fly
(plumbing only: noise images, gibberish captions).

The demo inputs in ``jobs/demo/`` are written by ``write_demo_inputs``: new scenes of the world (its ``val``
split: never trained on, made of shape-colour pairs the model has seen) plus deliberately bad records, a
repeated prompt and a repeated image (exact input duplicates), and a prompt and an image holding a red square
(the shapes world's stand-in for unsafe content, which its ``not_safe`` head scores). How the
model does on shape-colour pairs it never saw is measured by ``bench/quality.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shapes.world import Sample, Scene, ShapesWorld

SPECS = Path(__file__).parent / "specs"
DEMO_INPUTS = Path(__file__).parent / "demo"
DEMO_SPECS = ("demo-t2i.yaml", "demo-captions.yaml")
SHAPES_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "unidiffuser-shapes"
MODELS = ("shapes", "tiny")
BAD_PROMPTS = ("", "   ")  # error rows in the demo's output: an empty and a whitespace-only prompt
DEMO_PROMPTS = 14
DEMO_IMAGES = 12
DEMO_EXTRAS = 2  # each input kind also holds a repeat of its first input and a red-square input
DEMO_SPLIT, DEMO_START = "val", 1000  # past the val samples the training command monitors (0..511)


class DemoModelMissing(FileNotFoundError):
    """The trained shapes checkpoint is not where the demo expects it."""


def prepare_models(model: str, folder: Path) -> tuple[Path, Path]:
    """(checkpoint, CLIP scorer) for ``model``: the committed shapes family, or tiny random models written once."""
    if model == "shapes":
        if not (SHAPES_CHECKPOINT / "model_index.json").exists():
            raise DemoModelMissing(
                f"the trained demo checkpoint is missing at {SHAPES_CHECKPOINT}: use a git checkout of the "
                "repository, retrain it with `python -m shapes.train`, or run `demo --model tiny`"
            )
        return SHAPES_CHECKPOINT, SHAPES_CHECKPOINT / "clip"
    if model != "tiny":
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

    checkpoint, clip = folder / "unidiffuser-tiny", folder / "clip-tiny"
    if not (checkpoint / "model_index.json").exists():
        write_tiny_checkpoint(checkpoint, version=1)
    if not (clip / "config.json").exists():
        write_tiny_clip(clip)
    return checkpoint, clip


def image_file_name(index: int, scene) -> str:
    """``03-red-circle-and-blue-square-on-grey.png``: the ground truth, readable by people and tests."""
    objects = "-and-".join(f"{o.colour}-{o.shape}" for o in scene.objects)
    return f"{index:02d}-{objects}-on-{scene.background}.png"


def pairs_from_file_name(name: str) -> list[tuple[str, str]]:
    """The (shape, colour) pairs an ``image_file_name`` names."""
    objects = re.sub(r"^\d+-|-on-\w+\.png$", "", name).split("-and-")
    return sorted((shape, colour) for colour, shape in (o.split("-") for o in objects))


def write_demo_inputs(folder: Path = DEMO_INPUTS, seed: int = 0) -> None:
    """The demo's prompts (world captions, bad prompts, a repeat, a red square) and image folder (world images
    named by their ground truth, a repeat, a red square). The corrupt ``broken.jpg`` and the non-image
    ``notes.csv`` are kept as they are."""
    from PIL import Image

    from shapes.heads import is_not_safe
    from shapes.world import ShapesWorld

    world = ShapesWorld(seed)
    prompts = [world.sample(DEMO_START + i, DEMO_SPLIT).caption for i in range(DEMO_PROMPTS)]
    unsafe = _red_square_samples(world, is_not_safe)
    lines = prompts[:6] + [BAD_PROMPTS[0]] + prompts[6:10] + [BAD_PROMPTS[1]] + prompts[10:]
    lines += [repeated_prompt(prompts[0]), unsafe[0].caption]
    (folder / "prompts.txt").write_text("\n".join(lines) + "\n")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):
        old.unlink()
    samples = [world.sample(DEMO_START + DEMO_PROMPTS + i, DEMO_SPLIT) for i in range(DEMO_IMAGES)]
    samples += [samples[0], unsafe[1]]  # the repeat: the same pixels under another name
    for i, sample in enumerate(samples):
        Image.fromarray(sample.image).save(images / image_file_name(i, sample.scene))


def repeated_prompt(prompt: str) -> str:
    """The demo's repeated prompt: the first one in other case and spacing (the same after normalisation)."""
    return "  " + prompt.upper().replace(" ", "  ")


def _red_square_samples(world: ShapesWorld, is_not_safe: Callable[[Scene], bool]) -> list[Sample]:
    """The first two val scenes past the demo's own that hold a red square (a prompt and an image)."""
    found: list[Sample] = []
    index = DEMO_START + DEMO_PROMPTS + DEMO_IMAGES
    while len(found) < 2:
        sample = world.sample(index, DEMO_SPLIT)
        if is_not_safe(sample.scene):
            found.append(sample)
        index += 1
    return found


def run_demo(out: Path, *, model: str = "shapes", quiet: bool = False) -> int:
    """Run both demo jobs into ``out`` and print what each made."""
    from jobs.inspect_output import inspect_output
    from jobs.local_ray import connect
    from jobs.spec import load_spec
    from pipelines.provenance.verify import verify
    from pipelines.run import run_pipeline
    from pipelines.writers.summary import outcome_line

    out = out.resolve()
    checkpoint, clip = prepare_models(model, out / "models")
    connect(None, log_to_driver=False)
    for name in DEMO_SPECS:
        job = Path(name).stem.removeprefix("demo-")
        overrides = [f"output.uri={out / job}"]
        if model == "tiny":  # random models: no meaningful scores to filter on
            overrides += [f"model.checkpoint={checkpoint}", f"clip.model={clip}", "clip.min_score=-1.0"]
            overrides += ["curation.heads=[]"]  # the shapes heads read the shapes CLIP's embeddings
        config = load_spec(SPECS / name, overrides)
        report = run_pipeline(config, progress=not quiet)
        s = report.summary
        print(f"\n== {config.name}: {outcome_line(s)}{'' if report.did_model_work else ' (already done: no model work)'}")  # fmt: skip
        print(inspect_output(str(out / job), samples=16)[0])
    print(f"\nshards, rejects, errors, dataset cards and contact sheets are under {out}")
    checks = {job: verify(str(out / job)) for job in (Path(n).stem.removeprefix("demo-") for n in DEMO_SPECS)}
    for job, check in checks.items():
        print(f"{job} {check.summary_line()}")
        for problem in check.problems[:5]:
            print(f"  {problem}")
    return 0 if all(check.ok for check in checks.values()) else 1
