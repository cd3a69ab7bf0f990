"""CLI fixtures: tiny models written once, and a helper that runs ``unidiffuser-batch`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

CPU_RESOURCES = {
    "cpus_per_actor": 0.5,
    "clip_cpus_per_actor": 0.5,
    "writer_cpus": 0.5,
    "preprocess_cpus": 0.5,
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return write_tiny_checkpoint(root / "unidiffuser", version=1), write_tiny_clip(root / "clip")


@pytest.fixture()
def prompt_spec(tmp_path: Path, tiny_models: tuple[Path, Path]):
    """Write a small t2i job spec (prompts file included) and return a function making variants of it."""
    checkpoint, clip = tiny_models

    def make(n_prompts: int = 6, shard_size: int = 2, output: str = "out", **sections) -> Path:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text(
            "\n".join(f"a shape number {i} on a grey background" for i in range(n_prompts)) + "\n"
        )
        spec = {
            "name": "cli-test",
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {"checkpoint": str(checkpoint), "mode": "t2i", "steps": 2},
            "clip": {"enabled": True, "model": str(clip)},
            "output": {
                "uri": str(tmp_path / output),
                "formats": ["parquet", "webdataset"],
                "shard_size": shard_size,
            },
            "resources": dict(CPU_RESOURCES),
        }
        for section, values in sections.items():
            spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
        path = tmp_path / f"{output}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return make


def cli(
    *args: str, check: bool = True, timeout: float = 300, ray_address: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``unidiffuser-batch`` in a fresh process, as a user does: on a local Ray of its own, or on the running
    Ray that ``ray_address`` names (the ``ray_address`` fixture: the session's), as on a cluster."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    proc = subprocess.run(
        [sys.executable, "-m", "jobs", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc
