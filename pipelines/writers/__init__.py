"""Writers: one unit's records to output shards (parquet, webdataset, clip-retrieval embeddings), rejected and
error files, its commit marker, and the job's ``_summary.json``. ``write_unit`` is the entry point."""

from pipelines.writers.commit import committed_units
from pipelines.writers.summary import AccountingError, write_summary
from pipelines.writers.unit_writer import FORMATS, OutputSpec, write_unit

__all__ = ["FORMATS", "AccountingError", "OutputSpec", "committed_units", "write_summary", "write_unit"]
