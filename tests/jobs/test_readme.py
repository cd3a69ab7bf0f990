"""README stays true: its spec reference is the one generated from the typed model."""

from __future__ import annotations

from pathlib import Path

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
