"""``_summary.json``: a job's totals aggregated from its unit commit markers, checked for exact accounting.

Every record (each of ``samples_per_input`` samples of each input) ends as exactly one of written, rejected or
errored; ``write_summary`` raises ``AccountingError`` (and writes nothing) when the committed units do not add
up to the job's records.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pipelines import storage
from pipelines.writers.commit import committed_units

SUMMARY_FILE = "_summary.json"
SECRET_WORDS = frozenset(
    {"key", "keys", "secret", "secrets", "token", "password", "passwd", "credential", "credentials", "auth"}
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


class AccountingError(RuntimeError):
    """The committed units do not account for every input record."""


def is_secret(name: str) -> bool:
    """Whether a config key names a secret: one of its words (split on ``_ - .`` and camelCase) is in
    ``SECRET_WORDS``. This over-removes (``key_column`` too) on purpose: the summary is a report."""
    return any(word.lower() in SECRET_WORDS for word in _WORD.findall(str(name)))


def redact(config: Any) -> Any:
    """``config`` with secret keys removed at any depth and ``user:password@`` stripped from URLs."""
    if isinstance(config, Mapping):
        return {k: redact(v) for k, v in config.items() if not is_secret(k)}
    if isinstance(config, (list, tuple)):
        return [redact(v) for v in config]
    if isinstance(config, str):
        return _URL_USERINFO.sub(r"\g<scheme>", config)
    return config


def summarize(
    markers: Mapping[int, Mapping[str, Any]], *, inputs: int, samples_per_input: int = 1
) -> dict[str, Any]:
    """Totals over unit markers; raises AccountingError unless the records (inputs x samples_per_input)
    equal written + rejected + errored."""
    records = inputs * samples_per_input
    totals = {name: sum(int(m.get(name, 0)) for m in markers.values()) for name in _COUNTS}
    rejected_reasons: Counter[str] = Counter()
    error_reasons: Counter[str] = Counter()
    for marker in markers.values():
        rejected_reasons.update(marker.get("rejected_reasons", {}))
        error_reasons.update(marker.get("error_reasons", {}))
    outcomes = totals["written"] + totals["rejected"] + totals["errored"]
    if outcomes != records or totals["records"] != records:
        expected = f"{inputs} inputs"
        if samples_per_input > 1:
            expected = f"{records} records ({inputs} inputs x {samples_per_input} samples)"
        raise AccountingError(
            f"records are not accounted for: {expected} but {totals['written']} written + {totals['rejected']} rejected + "
            f"{totals['errored']} errored = {outcomes} over {len(markers)} committed units (which hold "
            f"{totals['records']} records); resume the job to finish its remaining units"
        )
    return {
        "inputs": inputs,
        "samples_per_input": samples_per_input,
        "records": records,
        **{name: totals[name] for name in _COUNTS if name != "records"},
        "units": len(markers),
        "rejected_reasons": dict(rejected_reasons.most_common()),
        "error_reasons": dict(error_reasons.most_common()),
    }


_COUNTS = ("records", "written", "rejected", "errored")


def outcome_line(summary: Mapping[str, Any]) -> str:
    """``12 inputs -> 10 written, 1 rejected, 1 errored`` (with ``x 4 samples = 48 records`` when several)."""
    samples = summary.get("samples_per_input", 1)
    drawn = f" x {samples} samples = {summary['records']} records" if samples > 1 else ""
    return (
        f"{summary['inputs']} inputs{drawn} -> {summary['written']} written, {summary['rejected']} rejected, "
        f"{summary['errored']} errored"
    )


def write_summary(
    output_uri: str,
    *,
    inputs: int,
    samples_per_input: int = 1,
    config: Mapping[str, Any],
    wall_time_s: float,
    versions: Mapping[str, str],
    storage_options: Mapping | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate all unit markers under ``output_uri`` into ``_summary.json`` and return it.

    ``config`` is written with secrets removed (see ``redact``). Raises AccountingError, writing nothing,
    when the committed units do not account for every record (``inputs`` x ``samples_per_input``).
    """
    markers = committed_units(output_uri, storage_options)
    summary = summarize(markers, inputs=inputs, samples_per_input=samples_per_input)
    summary |= {
        "wall_time_s": round(float(wall_time_s), 3),
        "records_per_s": round(summary["records"] / wall_time_s, 3) if wall_time_s > 0 else None,
        "versions": dict(versions),
        "config": redact(dict(config)),
        **dict(extra or {}),
    }
    fs, root = storage.open_filesystem(output_uri, storage_options)
    data = json.dumps(summary, indent=2, sort_keys=False, default=str).encode("utf-8")
    storage.write_bytes(fs, storage.join(root, SUMMARY_FILE), data)
    return summary
