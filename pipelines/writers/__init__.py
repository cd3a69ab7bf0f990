"""Writers: one unit's records to output shards (one class per format), rejected and error files, its commit
marker, and the job's ``_summary.json``. ``write_unit`` is the entry point."""

from pipelines.writers.commit import UnitCommit, committed_units
from pipelines.writers.formats import FORMAT_NAMES, OutputSpec
from pipelines.writers.summary import AccountingError, RunWork, write_summary
from pipelines.writers.unit_writer import retire_unit, write_unit

__all__ = [
    "FORMAT_NAMES",
    "AccountingError",
    "OutputSpec",
    "RunWork",
    "UnitCommit",
    "committed_units",
    "retire_unit",
    "write_summary",
    "write_unit",
]
