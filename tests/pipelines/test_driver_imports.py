"""A job's driver plans the job and hands the stages to Ray; the models load in the actors only."""

from __future__ import annotations

import subprocess
import sys

MODEL_LIBRARIES = ("torch", "diffusers", "transformers")


def test_the_driver_and_the_cli_import_no_model_library():
    """``unidiffuser-batch run`` / ``validate --plan`` import the pipeline and every stage class: none of them may
    pull in torch, diffusers or transformers (about 9 s of every run's start, and the driver's memory,
    otherwise)."""
    code = (
        "import sys, jobs.cli, pipelines.run\n"
        f"print(' '.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"the driver imports {loaded.stdout.strip()}"
