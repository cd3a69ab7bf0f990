"""README stays true: its spec reference is the one generated from the typed model, its quick start is two
commands, its reading examples run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.spec_reference import END, START, spec_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_spec_reference_matches_the_model():
    text = README.read_text()
    embedded = text[text.index(START) : text.index(END) + len(END)]
    assert embedded == spec_reference(), "regenerate with: python -m jobs.spec_reference"


def test_readme_quick_start_is_two_make_commands():
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


READING_START, READING_END = "<!-- readme-reading:start -->", "<!-- readme-reading:end -->"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_readme_reading_examples_run_verbatim_on_a_job_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The README's "Reading them" block, run as written against a real job output where it expects one."""
    from pipelines.config import PipelineConfig
    from pipelines.run import run_pipeline
    from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

    text = README.read_text()
    block = text[text.index(READING_START) : text.index(READING_END)]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    checkpoint, clip = tmp_path / "model", tmp_path / "clip"
    write_tiny_checkpoint(checkpoint)
    write_tiny_clip(clip)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    config = PipelineConfig.model_validate({
        "input": {"kind": "prompts", "uri": str(prompts)},
        "model": {"checkpoint": str(checkpoint), "mode": "t2i", "steps": 1},
        "clip": {"enabled": True, "model": str(clip)},
        "output": {"uri": str(tmp_path / "demo-output" / "t2i"), "formats": ["parquet", "webdataset"],
                   "image_format": "png"},
        "resources": {"cpus_per_actor": 0.5, "clip_cpus_per_actor": 0.5, "writer_cpus": 0.5, "preprocess_cpus": 0.5},
    })  # fmt: skip
    run_pipeline(config, progress=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own example)
    assert scope["table"].num_rows == 3 and scope["train"].num_rows == 3
    assert scope["text"] in {"a red circle", "a blue square", "a green triangle"}
    assert scope["image"].size == (scope["image"].width, scope["image"].height) and len(scope["rows"]) == 1
