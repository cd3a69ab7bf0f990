"""requirements.lock agrees with pyproject.toml: every requirement is pinned within its range, with hashes, and
nothing is pinned as a direct requirement that pyproject.toml no longer asks for. ``make lock`` refreshes it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "unidiffuser-batch"
LOCKED_EXTRAS = ("dev",)
FIX = "requirements.lock is out of date with pyproject.toml: run `make lock` and commit the result"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^ ;\\]+)")


def _lock_entries() -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, the lines of its entry) for every package in the lock."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    current: list[str] | None = None
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = [line]
            entries[canonicalize_name(match.group(1))] = (Version(match.group(3)), current)
        elif current is not None and line.startswith(" "):
            current.append(line)
    return entries


def _project_requirements() -> list[Requirement]:
    """The requirements the lock must satisfy: the dependencies and the locked extras (self-references expanded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    found = [Requirement(r) for r in project["dependencies"]]
    pending = list(LOCKED_EXTRAS)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in extras[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                pending += sorted(req.extras)
            else:
                found.append(req)
    return found


def _constraints() -> list[Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_within_its_range() -> None:
    entries = _lock_entries()
    problems = []
    for req in [*_project_requirements(), *_constraints()]:
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "extra": ""}):
            continue
        pinned = entries.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{req} but the lock pins {pinned[0]}")
    assert not problems, f"{FIX}:\n" + "\n".join(problems)


def test_no_direct_pin_without_a_requirement() -> None:
    """A package the lock pins only because pyproject.toml asked for it must still be asked for."""
    wanted = {canonicalize_name(r.name) for r in _project_requirements()}
    stale = []
    for name, (_, lines) in _lock_entries().items():
        via = [line.strip().removeprefix("# via").strip() for line in lines if "#" in line]
        via = [v.removeprefix("#").strip() for v in via if v]
        only_us = via and all(v.startswith(PROJECT) for v in via)
        if only_us and name not in wanted:
            stale.append(name)
    assert not stale, f"{FIX}: pinned for {PROJECT} but no longer required: {', '.join(stale)}"


def test_every_pin_has_a_hash() -> None:
    missing = [name for name, (_, lines) in _lock_entries().items() if not any("--hash=" in x for x in lines)]
    assert not missing, f"{FIX}: entries without hashes: {', '.join(missing)}"


def test_torch_is_the_cpu_build() -> None:
    """CI and the demo run the CPU wheel that lies on their disk, never the multi-GB CUDA build."""
    version, _ = _lock_entries()["torch"]
    assert version.local == "cpu", f"torch {version} in the lock is not the CPU build: {FIX}"
