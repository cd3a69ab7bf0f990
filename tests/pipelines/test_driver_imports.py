"""A job's driver plans the job and hands the stages to Ray; the models load in the actors only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = ("torch", "diffusers", "transformers")


def _model_libraries_loaded_by(code: str) -> str:
    report = f"\nprint('loaded:', ' '.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code + report],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return proc.stdout.rsplit("loaded:", 1)[1].strip()


def test_the_driver_and_the_cli_import_no_model_library():
    """``unidiffuser-batch run`` / ``validate --plan`` import the pipeline and every stage class: none of them may
    pull in torch, diffusers or transformers (about 9 s of every run's start, and the driver's memory,
    otherwise)."""
    loaded = _model_libraries_loaded_by(
        "import jobs.cli, jobs.validate, pipelines.run, pipelines.heads.validate"
    )
    assert loaded == "", f"the driver imports {loaded}"


def test_validating_a_spec_with_score_heads_loads_no_model_library():
    """``validate`` checks each head's files (config, tensor shapes) where they lie, without a network."""
    spec = ROOT / "jobs" / "specs" / "demo-t2i.yaml"
    assert "heads:" in spec.read_text()
    loaded = _model_libraries_loaded_by(
        f"from jobs.cli import main\nassert main(['validate', {str(spec)!r}]) == 0"
    )
    assert loaded == "", f"validate imports {loaded}"
