"""The dataset card of a job's output: ``README.md`` at its root, in Hugging Face's dataset-card form.

Its YAML header names the data files (``configs`` / ``data_files``: the parquet shards, else the webdataset
shards), so ``datasets.load_dataset(OUTPUT)`` reads the written records as they are (never ``rejected/`` or
``errors/``). One configuration only: ``datasets`` picks one builder for a whole folder, so a second
configuration of another format would be read with the first one's builder; the card shows the call that
reads the tars instead. It tags the data (``synthetic`` when the model made images or texts). The body says what made the
data (the generation config, the model and its version identity), how many records were written, rejected
and errored and why, how the scores are distributed, and how the images are marked (the provenance statement).
It is rewritten after every run, from the summary and the written shards' score columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from pipelines import records as r
from pipelines import storage
from pipelines.config import PipelineConfig
from pipelines.writers.parquet_shards import PARQUET_DIR

CARD_FILE = "README.md"
HISTOGRAM_BINS = 10
_TASKS = {"t2i": ["text-to-image"], "i2t": ["image-to-text"], "i2t2i": ["image-to-image"]}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))  # fmt: skip


def card_header(config: PipelineConfig, written: int) -> dict[str, Any]:
    """The card's YAML header: data files per configuration, tags, task and size categories."""
    mode = config.model.mode
    formats = config.output.formats
    configs = []
    if "parquet" in formats:
        configs.append(_config("default", f"{PARQUET_DIR}/*.parquet"))
    elif "webdataset" in formats:
        configs.append(_config("default", "webdataset/*.tar"))
    tags = ["unidiffuser-batch", "unidiffuser", "image-text"]
    if mode.makes_image or mode.makes_text:
        tags.append("synthetic")
    header: dict[str, Any] = {
        "pretty_name": config.name,
        "tags": tags,
        "task_categories": _TASKS.get(mode.value, ["text-to-image", "image-to-text"]),
        "size_categories": [next((name for limit, name in _SIZES if written < limit), "n>100M")],
        "configs": configs,
    }
    if config.output.license:
        header["license"] = config.output.license
    return header


def _config(name: str, path: str) -> dict[str, Any]:
    return {"config_name": name, "data_files": [{"split": "train", "path": path}]}


def edge_labels(edges: Sequence[float]) -> list[str]:
    """Histogram bin edges as signed decimals, with as many places (3 at least) as it takes for neighbouring
    edges to read differently: scores that all lie near 0, such as a safety head's on safe images, keep
    distinct labels instead of ``+0.000 .. +0.000`` on every bin."""
    for places in range(3, 13):
        labels = [f"{e:+.{places}f}" for e in edges]
        if len(set(labels)) == len(labels):
            break
    return labels


def score_histogram(values: Sequence[float | None], bins: int) -> tuple[list[float], list[int]] | None:
    """(bin edges, counts) of the finite values over ``bins`` bins; None when there are none. A written row's
    scores are finite (a non-finite score makes an error row), but a histogram never fails on one that is not."""
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return None
    counts, edges = np.histogram(finite, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def score_histograms(
    uri: str, columns: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, tuple[list[float], list[int]]]:
    """Per score column of the written records: (bin edges, counts) over ``HISTOGRAM_BINS`` bins. Reads only
    those columns of the parquet shards."""
    fs, root = storage.open_filesystem(uri, storage_options)
    values: dict[str, list[float | None]] = {c: [] for c in columns}
    folder = storage.join(root, PARQUET_DIR)
    fs.invalidate_cache(folder)
    for path in sorted(fs.glob(f"{folder}/*.parquet")):
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            present = [c for c in columns if c in file.schema_arrow.names]
            table = file.read(columns=present)
        for column in present:
            values[column] += table.column(column).to_pylist()
    found = {}
    for column, scores in values.items():
        histogram = score_histogram(scores, HISTOGRAM_BINS)
        if histogram is not None:
            found[column] = histogram
    return found


def render_card(config: PipelineConfig, summary: Mapping[str, Any], histograms: Mapping[str, Any]) -> str:
    """The card's text: YAML header, then the sections of the module doc."""
    header = yaml.safe_dump(card_header(config, int(summary["written"])), sort_keys=False, allow_unicode=True)
    model = config.model
    versions = summary.get("versions", {})
    lines = [
        f"---\n{header}---",
        f"# {config.name}",
        "",
        f"Made by unidiffuser-batch {versions.get('unidiffuser-batch', '')} with the UniDiffuser model "
        f"`{model.model_id or model.checkpoint}` (version `{summary.get('model_versions', {}).get('checkpoint', 'unknown')}`) in mode "
        f"`{model.mode.value}`.",
        "",
        "## Contents",
        "",
        "| | records |",
        "|---|---:|",
        f"| inputs | {summary['inputs']} |",
        f"| written | {summary['written']} |",
        f"| rejected | {summary['rejected']} |",
        f"| errored | {summary['errored']} |",
        "",
        *_reasons("Rejected, by reason", summary.get("rejected_reasons", {})),
        *_reasons("Errored, by reason", summary.get("error_reasons", {})),
        *_layout(config),
        *_histograms(histograms),
        *_provenance(config),
        "## Generation config",
        "",
        "```yaml",
        yaml.safe_dump(_card_config(summary), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "## Versions",
        "",
        *[f"- {name}: {version}" for name, version in versions.items()],
        "",
    ]
    return "\n".join(lines)


def _card_config(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The generation config as the card shows it: without the output's own location (the card travels with
    the folder; a copied output keeps the same card)."""
    config = dict(summary.get("config", {}))
    if isinstance(config.get("output"), dict):
        config["output"] = {k: v for k, v in config["output"].items() if k != "uri"}
    return config


def _reasons(title: str, reasons: Mapping[str, int]) -> list[str]:
    if not reasons:
        return []
    rows = [f"| {_cell(reason)} | {count} |" for reason, count in reasons.items()]
    return [f"### {title}", "", "| reason | records |", "|---|---:|", *rows, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _layout(config: PipelineConfig) -> list[str]:
    lines = ["## Files", ""]
    if "parquet" in config.output.formats:
        lines.append(f"- `{PARQUET_DIR}/*.parquet`: the written records, one row each (image bytes included)")
    if "webdataset" in config.output.formats:
        lines.append("- `webdataset/*.tar`: the same records in img2dataset's webdataset layout")
    if "embeddings" in config.output.formats:
        lines.append("- `embeddings/`: CLIP embeddings in clip-retrieval's layout")
    lines += [
        "- `rejected/`, `errors/`: every other record, with its reason",
        "- `_summary.json`: the counts",
        "",
    ]
    lines += [
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("path/to/this/folder", split="train")',
    ]
    if "webdataset" in config.output.formats and "parquet" in config.output.formats:
        lines.append(
            'tars = datasets.load_dataset("webdataset", data_files={"train": "path/to/this/folder/webdataset/*.tar"}, '
            'split="train")'
        )
    return [*lines, "```", ""]


def _histograms(histograms: Mapping[str, Any]) -> list[str]:
    if not histograms:
        return []
    lines = ["## Scores of the written records", ""]
    for column, (edges, counts) in histograms.items():
        top = max(counts) or 1
        lines += [f"### {column}", "", "| from | to | records | |", "|---:|---:|---:|---|"]
        labels = edge_labels(edges)
        for low, high, count in zip(labels, labels[1:], counts, strict=False):
            lines.append(f"| {low} | {high} | {count} | {'█' * round(20 * count / top)} |")
        lines.append("")
    return lines


def _provenance(config: PipelineConfig) -> list[str]:
    mode, marks = config.model.mode, config.provenance
    lines = ["## Provenance", ""]
    if mode.makes_image:
        lines += [
            "Every image in this dataset was generated by a machine-learning model. Each image file says so "
            "itself: its XMP metadata carries the IPTC digital source type `trainedAlgorithmicMedia` and the "
            "generation record (software, model and its version, mode, prompt, seed, sampler settings, job, "
            "record key); PNG files also carry it as the `parameters` text.",
            "",
        ]
        if marks.watermark:
            lines += [
                f"Each image carries an invisible watermark ({marks.watermark_method}) identifying the job.",
                "",
            ]
        if marks.c2pa is not None:
            lines += ["Each image carries a C2PA manifest, signed by the publisher, asserting its creation by a "
                      "trained algorithm.", ""]  # fmt: skip
    if mode.makes_text:
        lines += [
            f"The `{r.GENERATED_CAPTION}` of every record was generated by the model; each row's `{r.SYNTHETIC}` "
            "column lists the fields the model made.",
            "",
        ]
    if not (mode.makes_image or mode.makes_text):
        lines += ["Nothing in this dataset was generated.", ""]
    lines += ["Check the marks with `unidiffuser-batch verify path/to/this/folder`.", ""]
    return lines


def write_dataset_card(
    config: PipelineConfig, summary: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write ``README.md`` at the output's root; returns its text."""
    columns = [r.CLIP_SCORE, *(h.column or h.name for h in config.curation.heads)]
    text = render_card(config, summary, score_histograms(config.output.uri, columns, storage_options))
    fs, root = storage.open_filesystem(config.output.uri, storage_options)
    storage.write_bytes_if_changed(fs, storage.join(root, CARD_FILE), text.encode("utf-8"))
    return text
