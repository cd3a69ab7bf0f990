"""What every job writes for each unit, whatever its formats: the rejected and the errored records (parquet,
only when there are some), and the unit's img2dataset-style stats (with any shard format)."""

from __future__ import annotations

import json

from pipelines.writers import parquet_shards, webdataset_shards
from pipelines.writers.formats import OutputSpec, UnitRows

REJECTED_DIR = "rejected"
ERRORS_DIR = "errors"


class RejectedRecords:
    """``rejected/{u}.parquet``: records the filter rejected, with their scores, reason and image."""

    name = "rejected"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{REJECTED_DIR}/{unit}.parquet",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        return {path: parquet_shards.table_file(rows.rejected, parquet_shards.REJECTED_SCHEMA)}


class ErroredRecords:
    """``errors/{u}.parquet``: records some stage could not process, with the reason."""

    name = "errors"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{ERRORS_DIR}/{unit}.parquet",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        return {path: parquet_shards.table_file(rows.errored, parquet_shards.ERRORS_SCHEMA)}


class ShardStats:
    """``shards/{u}_stats.json``: img2dataset-style counts, written with either shard format."""

    name = "stats"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{webdataset_shards.SHARDS_DIR}/{unit}_stats.json",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        wanted = {"parquet", "webdataset"} & set(output.formats)
        return {path: json.dumps(webdataset_shards.stats(rows.commit), indent=1).encode() if wanted else None}
