"""Write a corpus the way img2dataset 1.47 writes it, in each of its three output layouts.

Mirrors img2dataset's ``downloader.py`` (``compute_key``, the metadata schema: the input columns, then
``key, status, error_message, width, height, original_width, original_height``, then ``exif`` and ``sha256``
when asked) and ``writer.py`` (``WebDatasetSampleWriter``, ``FilesSampleWriter``, ``ParquetSampleWriter``:
every URL a metadata row, in the order downloads finish, only successes in the tar / folder, the parquet
layout's image column null on failures; ``logger.write_stats``'s ``{shard}_stats.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

SIDE = 24  # px: small, and above the pipeline's 16 px minimum


@dataclass(frozen=True)
class Url:
    """One input row of img2dataset: a URL and caption, and what downloading it gave."""

    url: str
    caption: str
    image: bytes | None  # None: the download (or resize) failed
    error: str | None = None
    status: str = "success"


def jpeg(seed: int, size: int = SIDE) -> bytes:
    """A small JPEG that differs by ``seed``."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG")
    return buffer.getvalue()


def corpus(n: int, *, failed: set[int] = frozenset(), seed: int = 0) -> list[Url]:
    """``n`` URLs, those in ``failed`` failing to download (one of them failing to resize)."""
    rows = []
    for i in range(n):
        if i in failed:
            status = "failed_to_resize" if i == min(failed) else "failed_to_download"
            rows.append(Url(f"http://img.example/{i}.jpg", f"caption {i}", None, "HTTP Error 404", status))
        else:
            rows.append(Url(f"http://img.example/{i}.jpg", f"caption {i}", jpeg(seed * 1000 + i)))
    return rows


SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("exif", pa.string()),
        pa.field("sha256", pa.string()),
    ]
)


def compute_key(index: int, shard_id: int, oom_sample_per_shard: int, oom_shard_count: int) -> str:
    """img2dataset's key: the shard id and the row's index in its shard, zero-padded."""
    return f"{(10**oom_sample_per_shard) * shard_id + index:0{oom_sample_per_shard + oom_shard_count}d}"


def write_corpus(
    folder: Path, urls: list[Url], *, layout: str, per_shard: int, oom_shard_count: int = 5, seed: int = 7
) -> list[str]:
    """Write ``urls`` to ``folder`` in ``layout`` (``webdataset``, ``files`` or ``parquet``); returns the keys
    of the successful samples, in writing order."""
    folder.mkdir(parents=True, exist_ok=True)
    oom_sample = math.ceil(math.log10(per_shard))
    written = []
    for shard_id, begin in enumerate(range(0, len(urls), per_shard)):
        shard = urls[begin : begin + per_shard]
        name = f"{shard_id:0{oom_shard_count}d}"
        order = list(range(len(shard)))
        random.Random(seed + shard_id).shuffle(order)  # imap_unordered: in the order downloads finish
        metas, images = [], []
        for i in order:
            row = shard[i]
            ok = row.image is not None
            meta = {
                "url": row.url,
                "caption": row.caption,
                "key": compute_key(i, shard_id, oom_sample, oom_shard_count),
                "status": row.status,
                "error_message": row.error,
                "width": SIDE if ok else None,
                "height": SIDE if ok else None,
                "original_width": SIDE if ok else None,
                "original_height": SIDE if ok else None,
                "exif": "{}" if ok else None,
                "sha256": hashlib.sha256(row.image).hexdigest() if ok else None,
            }
            metas.append(meta)
            images.append(row.image)
            if ok:
                written.append(meta["key"])
        _write_shard(folder, name, layout, metas, images, shard)
        stats = {
            "count": len(shard),
            "successes": sum(m["status"] == "success" for m in metas),
            "failed_to_download": sum(m["status"] == "failed_to_download" for m in metas),
            "failed_to_resize": sum(m["status"] == "failed_to_resize" for m in metas),
            "duration": 1.0,
            "start_time": 1.7e9,
            "end_time": 1.7e9 + 1,
            "status_dict": {"success": sum(m["status"] == "success" for m in metas)},
        }
        (folder / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return written


def _write_shard(
    folder: Path, name: str, layout: str, metas: list[dict], images: list[bytes | None], shard: list[Url]
) -> None:
    if layout == "parquet":  # ParquetSampleWriter: the metadata columns plus the image, one row per URL
        schema = SCHEMA.append(pa.field("jpg", pa.binary()))
        rows = [m | {"jpg": image} for m, image in zip(metas, images, strict=True)]
        pq.write_table(pa.Table.from_pylist(rows, schema), folder / f"{name}.parquet")
        return
    pq.write_table(pa.Table.from_pylist(metas, SCHEMA), folder / f"{name}.parquet")  # BufferedParquetWriter
    if layout == "webdataset":  # WebDatasetSampleWriter
        with wds.TarWriter(str(folder / f"{name}.tar")) as tar:
            for meta, image in zip(metas, images, strict=True):
                if image is not None:
                    sample = {"__key__": meta["key"], "jpg": image, "txt": meta["caption"]}
                    tar.write(sample | {"json": json.dumps(meta, indent=4)})
        return
    assert layout == "files", layout  # FilesSampleWriter
    sub = folder / name
    sub.mkdir(exist_ok=True)
    for meta, image in zip(metas, images, strict=True):
        if image is not None:
            (sub / f"{meta['key']}.jpg").write_bytes(image)
            (sub / f"{meta['key']}.txt").write_text(meta["caption"])
            (sub / f"{meta['key']}.json").write_text(json.dumps(meta, indent=4))
