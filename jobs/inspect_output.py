"""Summaries of a finished output: counts, reasons, a histogram of every score, and contact sheets (written
samples, the records each score head rejected, and a few near-duplicate groups: the kept record first), read
through the same storage options as ``run``."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from pipelines import records as r
from pipelines.writers.dataset_card import edge_labels, score_histogram
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
    found = score_histogram(values, bins)
    if found is None:
        return ["  (no scores)"]
    edges, counts = found
    peak = max(max(counts), 1)
    labels = edge_labels(edges)
    width = max(9, *map(len, labels))
    return [
        f"  {lo:>{width}} .. {hi:>{width}} | {'#' * round(30 * c / peak)} {c}"
        for c, lo, hi in zip(counts, labels[:-1], labels[1:], strict=True)
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


DUPLICATE_GROUPS = 4


def duplicate_groups(
    output_uri: str, groups: int = DUPLICATE_GROUPS, storage_options: Mapping[str, Any] | None = None
) -> list[list[dict[str, Any]]]:
    """Up to ``groups`` near-duplicate groups of the dedup phase (``dedup/removals.parquet``): the kept record,
    then the records removed as its duplicates (at most a sheet row). Reads only the units they sit in."""
    fs, root = _fs(output_uri, storage_options)
    manifest = f"{root}/dedup/removals.parquet"
    if not fs.exists(manifest):
        return []
    with fs.open(manifest, "rb") as f:
        removals = [m for m in pq.read_table(f).to_pylist() if m.get("kept_key")]
    by_kept: dict[str, list[dict[str, Any]]] = {}
    for removal in removals:
        if len(by_kept) < groups or removal["kept_key"] in by_kept:
            by_kept.setdefault(removal["kept_key"], []).append(removal)
    columns = [r.KEY, r.IMAGE, r.TEXT, r.REASON, r.CLIP_SCORE]
    rows: dict[str, dict[str, Any]] = {}
    for unit in sorted({m["unit"] for group in by_kept.values() for m in group}):
        for folder in ("rejected", "parquet"):
            rows |= {
                row[r.KEY]: row for row in _unit_rows(fs, f"{root}/{folder}/{unit:05d}.parquet", columns)
            }
    missing = [key for key in by_kept if key not in rows]
    for path in sorted(fs.glob(f"{root}/parquet/*.parquet")) if missing else []:  # kept records elsewhere
        rows |= {row[r.KEY]: row for row in _unit_rows(fs, path, columns) if row[r.KEY] in by_kept}
        if all(key in rows for key in by_kept):
            break
    return [
        [rows[kept], *(rows[m["key"]] for m in group if m["key"] in rows)][:COLUMNS]
        for kept, group in by_kept.items()
        if kept in rows
    ]


def _unit_rows(fs: Any, path: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        file = pq.ParquetFile(f)
        return file.read(columns=[c for c in columns if c in file.schema_arrow.names]).to_pylist()


def duplicate_sheet(groups: Sequence[Sequence[Mapping[str, Any]]]) -> Image.Image:
    """One row of tiles per group, the kept record first."""
    rows = [contact_sheet(group) for group in groups]
    sheet = Image.new("RGB", (COLUMNS * TILE, sum(row.height for row in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
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
    groups = duplicate_groups(output_uri, storage_options=storage_options)
    if groups:
        base = Path(sheet_path).parent if sheet_path else None
        target = str(base / "duplicates.png") if base else f"{root}/duplicates.png"
        _save(duplicate_sheet(groups), fs, target, local=base is not None)
        lines.append(f"near-duplicate groups: {len(groups)} shown in {target} (the kept record first)")
    return "\n".join(lines), written_sheet
