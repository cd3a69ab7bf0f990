"""Summaries of a finished output: counts, score histogram, reasons, and a contact sheet of samples."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from pipelines.writers.summary import outcome_line

TILE, CAPTION_LINES, COLUMNS = 160, 4, 6


def load_summary(output_uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(output_uri, **(storage_options or {}))
    path = f"{root.rstrip('/')}/_summary.json"
    if not fs.exists(path):
        raise FileNotFoundError(f"no _summary.json under {output_uri}: is the job finished?")
    with fs.open(path, "rb") as f:
        return json.load(f)


def load_samples(output_uri: str, limit: int, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """Up to ``limit`` written records (image bytes, text, score) from the parquet shards."""
    fs, root = fsspec.core.url_to_fs(output_uri, **(storage_options or {}))
    rows: list[dict[str, Any]] = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/parquet/*.parquet")):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["key", "image", "text", "clip_score"])
        rows += table.to_pylist()
        if len(rows) >= limit:
            break
    return rows[:limit]


def score_histogram(samples: list[dict[str, Any]], bins: int = 8) -> list[str]:
    scores = np.array([s["clip_score"] for s in samples if s.get("clip_score") is not None])
    if scores.size == 0:
        return ["(no CLIP scores)"]
    counts, edges = np.histogram(scores, bins=bins)
    peak = max(int(counts.max()), 1)
    return [
        f"{lo:+.3f} .. {hi:+.3f} | {'#' * round(30 * c / peak)} {c}"
        for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True)
    ]


def contact_sheet(samples: list[dict[str, Any]]) -> Image.Image:
    """A grid of sample images, each with its key, score and (wrapped) text."""
    font = ImageFont.load_default()
    rows = max(1, -(-len(samples) // COLUMNS))
    cell_h = TILE + 12 * (CAPTION_LINES + 1)
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * cell_h
        if sample.get("image"):
            tile = Image.open(io.BytesIO(sample["image"])).convert("RGB").resize((TILE - 4, TILE - 4))
            sheet.paste(tile, (x + 2, y + 2))
        score = sample.get("clip_score")
        lines = [f"{sample['key']}" + (f"  {score:+.3f}" if score is not None else "")]
        lines += textwrap.wrap(sample.get("text") or "", width=26)[: CAPTION_LINES - 1]
        for j, line in enumerate(lines):
            draw.text((x + 3, y + TILE + 12 * j), line, fill="black", font=font)
    return sheet


def inspect_output(output_uri: str, *, samples: int = 24, sheet_path: str | None = None,
                   storage_options: dict | None = None) -> tuple[str, Path | None]:  # fmt: skip
    """A printable report of the output and the path of the contact sheet PNG written next to it."""
    summary = load_summary(output_uri, storage_options)
    rows = load_samples(output_uri, samples, storage_options)
    lines = [
        f"output   {output_uri}",
        f"records  {outcome_line(summary)}   ({summary.get('records_per_s')} records/s)",
    ]
    for title, key in (("rejected", "rejected_reasons"), ("errors", "error_reasons")):
        for reason, count in sorted(summary.get(key, {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"{title:8s} {count:6d}  {reason}")
    lines += ["clip score histogram (samples):", *score_histogram(rows)]
    written = None
    if rows:
        fs, root = fsspec.core.url_to_fs(output_uri, **(storage_options or {}))
        target = sheet_path or f"{root.rstrip('/')}/contact_sheet.png"
        buffer = io.BytesIO()
        contact_sheet(rows).save(buffer, format="PNG")
        with open(target, "wb") if sheet_path else fs.open(target, "wb") as f:
            f.write(buffer.getvalue())
        written = Path(target)
        lines.append(f"contact sheet: {target}")
    return "\n".join(lines), written
