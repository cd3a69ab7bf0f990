"""Exact duplicates among a job's inputs, known when it is planned (``curation.dedup.exact_inputs``).

Every unit is read once in Ray tasks (the same reader the pipeline uses) and each input gets a fingerprint:
its normalised prompt (``exact.normalise_prompt``) or the sha256 of its image bytes. Records the reader could
not produce, and prompts that are empty, have none (they end as error rows anyway). The first input of each
fingerprint in the plan's order is processed; every later one is a duplicate of it and is rejected by
preprocess, ``duplicate of input {key}``, before any model work. The same input always gives the same answer,
so a resume keeps the units it committed; a unit's duplicates are part of its input hash (``unit_inputs``).

The driver holds each input's key and fingerprint while it decides (about 100 bytes a record).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines import records as r
from pipelines.config import InputKind
from pipelines.dedup.exact import first_occurrences, image_fingerprint, prompt_fingerprint
from pipelines.readers.datasource import read_unit
from pipelines.readers.parallel import map_in_tasks
from pipelines.readers.plan import PlannedInput, ReadOptions, Unit
from unidiffuser import InputError
from unidiffuser.inputs import check_prompt

DUPLICATE_RULE = "duplicate of input"


def duplicate_reason(first_key: str) -> str:
    """The reason of an input identical to the earlier input ``first_key``."""
    return f"duplicate of input {first_key}"


@dataclass(frozen=True)
class InputDuplicates:
    """Which inputs repeat an earlier one: per unit, input key -> the key of the first such input."""

    by_unit: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Inputs that are duplicates."""
        return sum(len(d) for d in self.by_unit.values())

    def of(self, unit: int) -> Mapping[str, str]:
        return self.by_unit.get(unit, {})

    def groups(self) -> dict[str, list[str]]:
        """First input key -> the keys of its duplicates, in plan order."""
        found: dict[str, list[str]] = {}
        for unit in sorted(self.by_unit):
            for key, first in self.by_unit[unit].items():
                found.setdefault(first, []).append(key)
        return found

    def unit_input(self, unit: Unit) -> str:
        """``unit.input_hash``, with the unit's duplicates folded in when it has some: a unit whose
        duplicates change (an earlier file now holds their first copy) is redone on resume."""
        duplicates = self.of(unit.index)
        if not duplicates:
            return unit.input_hash
        text = json.dumps([unit.input_hash, sorted(duplicates.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_input_duplicates(planned: PlannedInput, kind: InputKind) -> InputDuplicates:
    """Read every unit (in Ray tasks) and find the inputs identical to an earlier one."""
    per_unit = map_in_tasks(
        functools.partial(_fingerprints, options=planned.options, kind=kind), planned.units
    )
    keys = [key for unit_keys, _ in per_unit for key in unit_keys]
    prints = [fp for _, unit_prints in per_unit for fp in unit_prints]
    first = first_occurrences(keys, prints)
    by_unit: dict[int, dict[str, str]] = {}
    for unit, (unit_keys, _) in zip(planned.units, per_unit, strict=True):
        found = {key: first[key] for key in unit_keys if key in first}
        if found:
            by_unit[unit.index] = found
    return InputDuplicates(by_unit)


def _fingerprints(unit: Unit, *, options: ReadOptions, kind: InputKind) -> tuple[list[str], list[str | None]]:
    (table,) = read_unit(unit, options)
    rows = table.select([r.KEY, r.PROMPT, r.IMAGE_BYTES, r.READ_ERROR]).to_pylist()
    return [row[r.KEY] for row in rows], [_fingerprint(row, kind) for row in rows]


def _fingerprint(row: dict, kind: InputKind) -> str | None:
    if row[r.READ_ERROR] is not None:
        return None
    if kind == InputKind.PROMPTS:
        try:
            return prompt_fingerprint(check_prompt(row[r.PROMPT]))
        except InputError:
            return None
    data = row[r.IMAGE_BYTES]
    return image_fingerprint(data) if data else None
