"""Format ``embeddings``: a unit's CLIP embeddings in clip-retrieval's ``clip_inference`` layout.

``img_emb/img_emb_{unit}.npy`` and ``text_emb/text_emb_{unit}.npy`` hold float32 ``[n, d]`` matrices and
``metadata/metadata_{unit}.parquet`` holds ``image_path``, ``caption`` (the ``text`` paired with the image)
and ``key``: row ``i`` of every file describes the same record, as autofaiss and clip-retrieval expect.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import records as r
from pipelines.writers import parquet_shards
from pipelines.writers.formats import OutputSpec, UnitRows

METADATA_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string()),
        pa.field("caption", pa.string()),
        pa.field(r.KEY, pa.string()),
        pa.field(r.CLIP_SCORE, pa.float64()),
        pa.field(r.PHASH, pa.string()),
    ]
)


def embedding_matrix(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray | None:
    """The float32 ``[n, d]`` matrix of ``column`` over ``rows``, or None when no row has it.

    The npy rows must stay aligned with the metadata rows: a row without this embedding (e.g. an image whose
    source had no caption, so no text embedding) gets a zero vector. Raises ValueError when dimensions differ.
    """
    values = [row.get(column) for row in rows]
    present = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values if v is not None]
    if not present:
        return None
    dims = {v.shape[0] for v in present}
    if len(dims) != 1:
        raise ValueError(f"{column} dimensions differ within a unit: {sorted(dims)}")
    (dim,) = dims
    zero = np.zeros(dim, dtype=np.float32)
    return np.stack([zero if v is None else np.asarray(v, dtype=np.float32).reshape(-1) for v in values])


def metadata_table(
    rows: Sequence[Mapping[str, Any]], image_paths: Sequence[str], scores: Sequence[str] = ()
) -> pa.Table:
    """The metadata rows aligned with the embedding matrices: clip-retrieval's ``image_path`` and ``caption``
    (the text paired with the image), then our key, CLIP score, pHash and each score head's column."""
    schema = pa.schema([*METADATA_SCHEMA, *(pa.field(c, pa.float64()) for c in scores)])
    values = {"image_path": list(image_paths), "caption": [row.get(r.TEXT) for row in rows]}
    return pa.table(
        {f.name: pa.array(values.get(f.name) or [row.get(f.name) for row in rows], f.type) for f in schema},
        schema=schema,
    )


def npy_bytes(matrix: np.ndarray) -> bytes:
    """``matrix`` in ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


EMBEDDINGS_DIR = "embeddings"


class ClipRetrievalEmbeddings:
    """Format ``embeddings``: ``img_emb`` / ``text_emb`` matrices and their aligned metadata per unit;
    ``image_path`` is ``webdataset/{u}.tar/{member}.{ext}`` (relative to the output) when the unit's tar
    holds the image, else the key."""

    name = "embeddings"

    def paths(self, unit: str) -> tuple[str, ...]:
        return (
            f"{EMBEDDINGS_DIR}/img_emb/img_emb_{unit}.npy",
            f"{EMBEDDINGS_DIR}/text_emb/text_emb_{unit}.npy",
            f"{EMBEDDINGS_DIR}/metadata/metadata_{unit}.parquet",
        )

    def files(self, rows: UnitRows, output: OutputSpec) -> dict[str, bytes | None]:
        img_path, text_path, metadata_path = self.paths(rows.name)
        ok = rows.ok
        img = embedding_matrix(ok, r.IMAGE_EMBEDDING) if ok else None
        text = embedding_matrix(ok, r.TEXT_EMBEDDING) if ok else None
        in_tar = "webdataset" in output.formats
        image_paths = [
            f"webdataset/{rows.name}.tar/{member}.{row[r.IMAGE_FORMAT]}"
            if in_tar and row.get(r.IMAGE) is not None
            else row[r.KEY]
            for row, member in zip(ok, rows.member_names, strict=True)
        ]
        has_embeddings = img is not None or text is not None
        metadata = metadata_table(ok, image_paths, output.score_columns) if has_embeddings else None
        return {
            img_path: None if img is None else npy_bytes(img),
            text_path: None if text is None else npy_bytes(text),
            metadata_path: None if metadata is None else parquet_shards.parquet_bytes(metadata),
        }
