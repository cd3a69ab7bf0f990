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
        return {
            path: parquet_shards.table_file(
                rows.rejected, parquet_shards.rejected_schema(output.score_columns)
            )
        }


class ErroredRecords:
    """``errors/{u}.parquet``: records some stage could not process, with the reason."""

    name = "errors"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{ERRORS_DIR}/{unit}.parquet",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        return {
            path: parquet_shards.table_file(rows.errored, parquet_shards.errors_schema(output.score_columns))
        }


STATS_DIR = "stats"


class ShardStats:
    """``stats/{u}_stats.json``: img2dataset's shard stats (see ``webdataset_shards.stats``), for every unit;
    in a folder of their own, so the shard folders hold only shards."""

    name = "stats"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (f"{STATS_DIR}/{unit}_stats.json",)

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        (path,) = self.paths(rows.name)
        stats = webdataset_shards.stats(rows.commit, start_time=rows.started_at, end_time=rows.finished_at)
        return {path: json.dumps(stats, indent=1).encode()}
