"""Resume: which committed units of an output a job may keep, and which it must redo or remove.

A unit's marker (``pipelines.writers.commit``) records the job fingerprint (``job_fingerprint``), the unit's
record count and its input hash (``Unit.input_hash``). A unit is kept only while all three match what this
job would write; otherwise it is redone. Units the plan no longer has are removed, marker first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.blocklist import Blocklist
from pipelines.config import PipelineConfig
from pipelines.dedup.inputs import InputDuplicates
from pipelines.heads.identity import head_identity
from pipelines.readers import PlannedInput, Unit
from pipelines.writers.commit import committed_units
from pipelines.writers.unit_writer import retire_unit
from unidiffuser.checkpoint import checkpoint_identity


@dataclass(frozen=True)
class ModelVersions:
    """The versions (``checkpoint_identity``: a hash of the folder listing) of the checkpoint, the CLIP
    model and the score heads a job reads, and the digest of its prompt blocklist, taken once when it is
    planned: they go into its fingerprint, and its actors load exactly these versions (a checkpoint or head
    replaced during the job fails it instead of mixing versions)."""

    checkpoint: str
    clip: str | None  # None without CLIP scoring
    heads: dict[str, str] = field(default_factory=dict)  # head name -> identity
    blocklist: str | None = None  # ``Blocklist.digest``

    @classmethod
    def of(cls, config: PipelineConfig) -> ModelVersions:
        """List the job's checkpoint, CLIP model and head folders now, and read its blocklist."""
        options = config.storage.storage_options()
        clip = (
            checkpoint_identity(config.clip.model, storage_options=options)
            if config.clip.enabled and config.clip.model
            else None
        )
        heads = {h.name: head_identity(h, options) for h in config.curation.heads}
        blocklist = config.curation.blocklist
        digest = Blocklist.load(blocklist, options).digest if blocklist else None
        return cls(checkpoint_identity(config.model.checkpoint, storage_options=options), clip, heads, digest)


def job_fingerprint(config: PipelineConfig, versions: ModelVersions) -> str:
    """The spec's output fingerprint plus the versions of what it reads: units made by another version of the
    checkpoint, CLIP model, a head or the blocklist are redone on resume, as units of another configuration
    are."""
    parts = [config.output_fingerprint(), versions.checkpoint, versions.clip or ""]
    parts += [f"{name}={identity}" for name, identity in sorted(versions.heads.items())]
    parts += [versions.blocklist] if versions.blocklist else []
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunPlan:
    """What running the job now would do to its output: which units it keeps, runs and removes."""

    planned: PlannedInput
    duplicates: InputDuplicates  # exact input duplicates (``curation.dedup.exact_inputs``), else none
    versions: ModelVersions  # what the run's actors load
    fingerprint: str  # ``job_fingerprint``, recorded in the marker of every unit the run commits
    samples_per_input: int
    keep: frozenset[int]  # committed by this job from the same input: skipped
    stale: tuple[int, ...]  # committed, but by another configuration or from other input: redone
    outside: tuple[int, ...]  # committed units the plan does not have: removed

    @property
    def to_run(self) -> int:
        """Units the run will generate and commit (the stale ones among them)."""
        return self.planned.num_units - len(self.keep)

    def to_run_units(self) -> list[Unit]:
        """The planned units the run generates and commits."""
        return [u for u in self.planned.units if u.index not in self.keep]

    def unit_inputs(self) -> dict[int, str]:
        """The input hash each unit the run commits records in its marker (duplicates folded in)."""
        return {u.index: self.duplicates.unit_input(u) for u in self.to_run_units()}

    def describe(self) -> str:
        """One line for people: records, units, and what happens to each unit."""
        records = self.planned.num_records * self.samples_per_input
        excluded = "".join(f"; {n} not records ({why})" for why, n in sorted(self.planned.excluded.items()))
        if self.duplicates.count:
            excluded += f"; {self.duplicates.count} inputs are exact duplicates of earlier ones"
        return (
            f"{records} records in {self.planned.num_units} units: {len(self.keep)} committed and kept, "
            f"{self.to_run} to run ({len(self.stale)} of them committed before but stale), "
            f"{len(self.outside)} outside the plan to remove{excluded}"
        )


def plan_run(
    config: PipelineConfig, planned: PlannedInput, duplicates: InputDuplicates | None = None
) -> RunPlan:
    """Compare the output's committed units (their markers) with the planned input and this job's
    fingerprint; reads markers and checkpoint listings, writes nothing. ``duplicates`` (the input's exact
    duplicates, when the job looks for them) are part of each unit's input hash."""
    duplicates = duplicates or InputDuplicates()
    markers = committed_units(config.output.uri, config.storage.storage_options())
    versions = ModelVersions.of(config)
    fingerprint = job_fingerprint(config, versions)
    samples = config.model.samples_per_input
    expected = {u.index: (u.num_records * samples, duplicates.unit_input(u)) for u in planned.units}
    keep = frozenset(
        u
        for u, m in markers.items()
        if m.fingerprint == fingerprint and (m.records, m.input) == expected.get(u)
    )
    return RunPlan(
        planned=planned,
        duplicates=duplicates,
        versions=versions,
        fingerprint=fingerprint,
        samples_per_input=samples,
        keep=keep,
        stale=tuple(sorted(set(markers) & set(expected) - keep)),
        outside=tuple(sorted(set(markers) - set(expected))),
    )


def retire_units(uri: str, units: Iterable[int], storage_options: Mapping[str, Any]) -> None:
    """Remove committed units the plan does not have (an earlier run with a smaller shard size or a larger
    input wrote them), marker first, so the output holds this job's units only and its accounting adds up."""
    for unit in units:
        retire_unit(uri, unit, storage_options)
