"""Summaries of a finished output: counts, reasons, a histogram of every score, and contact sheets (written
samples, and the records each score head rejected), read through the same storage options as ``run``."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from pipelines import records as r
from pipelines.writers.summary import SUMMARY_FILE, outcome_line
from unidiffuser.locations import open_location, redact

TILE, CAPTION_LINES, COLUMNS, LINE_CHARS = 160, 4, 6, 26


def _fs(output_uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, root = open_location(output_uri, storage_options)
    return fs, root.rstrip("/")


def load_summary(output_uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The output's ``_summary.json``; FileNotFoundError when the job has not finished."""
    fs, root = _fs(output_uri, storage_options)
    path = f"{root}/{SUMMARY_FILE}"
    if not fs.exists(path):
        raise FileNotFoundError(f"no {SUMMARY_FILE} under {redact(output_uri)}: is the job finished?")
    with fs.open(path, "rb") as f:
        summary: dict[str, Any] = json.load(f)
    return summary


def load_rows(
    output_uri: str, folder: str, limit: int, columns: Sequence[str], storage_options: Mapping | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of the parquet files in ``folder`` (``parquet``, ``rejected``), the ``columns``
    they have."""
    fs, root = _fs(output_uri, storage_options)
    rows: list[dict[str, Any]] = []
    for path in sorted(fs.glob(f"{root}/{folder}/*.parquet")):
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            present = [c for c in columns if c in file.schema_arrow.names]
            rows += file.read(columns=present).to_pylist()
        if len(rows) >= limit:
            break
    return rows[:limit]


def score_columns(summary: Mapping[str, Any]) -> list[str]:
    """The output's score columns: the CLIP score and each score head's column (from the job's config)."""
    heads = summary.get("config", {}).get("curation", {}).get("heads", [])
    return [r.CLIP_SCORE, *(h.get("column") or h["name"] for h in heads)]


def histogram(values: Sequence[float | None], bins: int = 8) -> list[str]:
    """Text bars of the finite values (or a line saying there are none)."""
    scores = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if scores.size == 0:
        return ["  (no scores)"]
    counts, edges = np.histogram(scores, bins=bins)
    peak = max(int(counts.max()), 1)
    return [
        f"  {lo:+9.3f} .. {hi:+9.3f} | {'#' * round(30 * c / peak)} {c}"
        for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True)
    ]


def _label_lines(text: str, width: int, lines: int) -> list[str]:
    """``text`` wrapped to ``width`` characters on at most ``lines`` lines, shortened with ``…`` when longer
    (a long key never runs into the next tile)."""
    wrapped = textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(wrapped) > lines:
        wrapped = [
            *wrapped[: lines - 1],
            textwrap.shorten(" ".join(wrapped[lines - 1 :]), width, placeholder="…"),
        ]
    return wrapped


def contact_sheet(samples: Sequence[Mapping[str, Any]], label: str = r.CLIP_SCORE) -> Image.Image:
    """A grid of sample images, each with its key, its ``label`` score (and reason, for rejected records)
    and its text, wrapped to the tile."""
    font = ImageFont.load_default()
    rows = max(1, -(-len(samples) // COLUMNS))
    cell_h = TILE + 12 * (CAPTION_LINES + 2)
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * cell_h
        if sample.get(r.IMAGE):
            tile = Image.open(io.BytesIO(sample[r.IMAGE])).convert("RGB").resize((TILE - 4, TILE - 4))
            sheet.paste(tile, (x + 2, y + 2))
        score = sample.get(label)
        lines = _label_lines(str(sample[r.KEY]), LINE_CHARS, 2)
        detail = sample.get(r.REASON) or (f"{label} {score:+.3f}" if isinstance(score, float) else "")
        lines += _label_lines(detail, LINE_CHARS, 1) if detail else []
        lines += _label_lines(sample.get(r.TEXT) or "", LINE_CHARS, CAPTION_LINES + 2 - len(lines))
        for j, line in enumerate(lines[: CAPTION_LINES + 2]):
            draw.text((x + 3, y + TILE + 12 * j), line, fill="black", font=font)
    return sheet


def _save(image: Image.Image, fs: Any, target: str, local: bool) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with open(target, "wb") if local else fs.open(target, "wb") as f:
        f.write(buffer.getvalue())
    return target


def inspect_output(
    output_uri: str,
    *,
    samples: int = 24,
    sheet_path: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str, Path | None]:
    """A printable report of the output, and the path of the contact sheet PNG written next to it (or at
    ``sheet_path``). A sheet of the records each score head rejected is written beside it."""
    summary = load_summary(output_uri, storage_options)
    scores = score_columns(summary)
    columns = [r.KEY, r.IMAGE, r.TEXT, r.REASON, r.REJECT_RULES, *scores]
    written = load_rows(output_uri, "parquet", max(samples, 512), columns, storage_options)
    rejected = load_rows(output_uri, "rejected", 512, columns, storage_options)
    last = summary.get("last_work_run") or {}
    lines = [
        f"output   {redact(output_uri)}",
        f"records  {outcome_line(summary)}   ({last.get('records_per_s')} records/s in the last run that did work)",
    ]
    for title, key in (("rejected", "rejected_reasons"), ("errors", "error_reasons")):
        for reason, count in sorted(summary.get(key, {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"{title:8s} {count:6d}  {reason}")
    for column in scores:
        lines += [f"{column} histogram (written records):", *histogram([row.get(column) for row in written])]
    fs, root = _fs(output_uri, storage_options)
    written_sheet = None
    if written:
        target = sheet_path or f"{root}/contact_sheet.png"
        _save(contact_sheet(written[:samples]), fs, target, local=bool(sheet_path))
        written_sheet = Path(target)
        lines.append(f"contact sheet: {target}")
    for column in scores:
        by_head = [
            row
            for row in rejected
            if any(rule.startswith(f"{column} ") for rule in row.get(r.REJECT_RULES) or [])
        ]
        if by_head:
            base = Path(sheet_path).parent if sheet_path else None
            target = str(base / f"rejected_{column}.png") if base else f"{root}/rejected_{column}.png"
            _save(contact_sheet(by_head[:samples], label=column), fs, target, local=base is not None)
            lines.append(f"rejected by {column}: {len(by_head)} shown in {target}")
    return "\n".join(lines), written_sheet
