"""Output formats: one class per format behind :class:`OutputFormat`, as img2dataset keeps one writer class per
output format. A format knows every file it may write for a unit and builds their bytes from the unit's rows,
so a new format, or a new column of one, is one place to touch.

``unit_writer`` holds the registry: the formats ``output.formats`` selects from, and those every job writes
(rejected and errored records, the unit's stats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from pipelines.provenance.job_marks import JobMarks
from pipelines.writers.commit import UnitCommit, unit_name
from pipelines.writers.encode import image_format

OutputFormatName = Literal["parquet", "webdataset", "embeddings"]
"""The formats ``output.formats`` selects from (each one class, registered in ``unit_writer``)."""
FORMAT_NAMES: tuple[str, ...] = get_args(OutputFormatName)


@dataclass(frozen=True)
class OutputSpec:
    """Where and how a job's units are written."""

    uri: str
    formats: tuple[str, ...] = ("parquet",)
    image_format: str = "jpg"  # jpg, png or webp
    quality: int = 95  # JPEG / WebP quality
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # of the job that writes (recorded in each marker; see resume)
    unit_inputs: Mapping[int, str] = field(default_factory=dict)  # unit -> ``Unit.input_hash`` (ditto)
    score_columns: tuple[str, ...] = ()  # the score heads' columns, written beside ``clip_score``
    marks: JobMarks | None = None  # what every generated image carries (None: written unmarked)

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMAT_NAMES)
        if unknown or not self.formats:
            raise ValueError(
                f"output formats must be a non-empty subset of {FORMAT_NAMES}, got {self.formats}"
            )
        object.__setattr__(self, "image_format", image_format(self.image_format))
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {self.quality}")


@dataclass(frozen=True)
class UnitRows:
    """One unit's records, split by outcome, with their image columns encoded: what every format writes from."""

    unit: int
    ok: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    errored: list[dict[str, Any]]
    commit: UnitCommit  # the unit's counts (files and identity are added when it is committed)
    member_names: list[str]  # webdataset-safe, unit-unique names of the ok rows (see webdataset_shards)
    started_at: float = 0.0  # when the unit's preprocessing began (UNIX time)
    finished_at: float = 0.0  # when its records were ready to write

    @property
    def name(self) -> str:
        """The zero-padded name shared by the unit's files."""
        return unit_name(self.unit)


class OutputFormat(Protocol):
    """One output format."""

    @property
    def name(self) -> str:
        """The format's name in ``output.formats``."""
        ...

    def paths(self, unit: str) -> tuple[str, ...]:
        """Every path (relative to the output root) this format may write for the unit named ``unit``."""
        ...

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        """The unit's files: bytes to write, or None for a path that must not exist (no rows of that kind)."""
        ...
