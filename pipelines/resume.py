"""Resume: which committed units of an output a job may keep, and which it must redo or remove.

A unit's marker (``pipelines.writers.commit``) records the job fingerprint (``job_fingerprint``), the unit's
record count and its input hash (``Unit.input_hash``). A unit is kept only while all three match what this
job would write; otherwise it is redone. Units the plan no longer has are removed, marker first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.readers import PlannedInput
from pipelines.writers.unit_writer import retire_unit
from unidiffuser.checkpoint import checkpoint_identity

log = logging.getLogger(__name__)


def job_fingerprint(config: PipelineConfig) -> str:
    """The spec's output fingerprint plus the identity (``checkpoint_identity``: a hash of the folder listing)
    of the checkpoint and of the CLIP model the job reads: units made by another version of either are redone
    on resume, as units of another configuration are."""
    options = config.storage.storage_options()
    parts = [
        config.output_fingerprint(),
        checkpoint_identity(config.model.checkpoint, storage_options=options),
    ]
    if config.clip.enabled:
        parts.append(checkpoint_identity(config.clip.model, storage_options=options))
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def still_valid_units(
    planned: PlannedInput, markers: dict[int, dict], fingerprint: str, samples_per_input: int = 1
) -> frozenset[int]:
    """Committed units this job can skip: those its own fingerprint committed from the same input records
    (``Unit.input_hash``) and with the planned record count. Any other marker (another configuration, shard
    size or input wrote it; or the files the unit reads changed since) is stale: the unit is redone."""
    expected = {u.index: (u.num_records * samples_per_input, u.input_hash) for u in planned.units}
    valid = {
        u
        for u, m in markers.items()
        if m.get("fingerprint") == fingerprint and (m.get("records"), m.get("input")) == expected.get(u)
    }
    stale = sorted(set(markers) & set(expected) - valid)
    if stale:
        log.warning("units %s were committed by another job configuration or plan: redoing them", stale)
    return frozenset(valid)


def retire_units_outside_plan(
    uri: str, planned: PlannedInput, markers: dict[int, dict], storage_options: Mapping[str, Any]
) -> None:
    """Remove committed units the plan does not have (an earlier run with a smaller shard size or a larger
    input wrote them), so the output holds this job's units only and its accounting adds up."""
    outside = sorted(set(markers) - {u.index for u in planned.units})
    if outside:
        log.warning("removing units %s: committed by an earlier run, not in this job's plan", outside)
    for unit in outside:
        retire_unit(uri, unit, storage_options)
