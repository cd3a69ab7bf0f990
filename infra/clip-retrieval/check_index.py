"""Check an index that ``clip-retrieval index`` built from a job's ``embeddings/`` folder.

Runs inside the isolated clip-retrieval environment (see check.sh): every vector was indexed, each embedding's
first hit is itself or a vector identical to it (a corpus with exact duplicate images has identical twins,
and either may come first in a correct index), and the metadata rows line up with the index ids
(clip-retrieval maps id i to row i).
"""

import glob
import sys

import faiss
import numpy as np
import pyarrow.parquet as pq


def wrong_first_hits(vectors: np.ndarray, first_hits: np.ndarray) -> list[int]:
    """The rows whose first hit is neither the row itself nor a vector identical to it."""
    rows = np.arange(len(vectors))
    return [
        int(i) for i in rows if first_hits[i] != i and not np.array_equal(vectors[first_hits[i]], vectors[i])
    ]


def main(embeddings: str, index: str) -> None:
    """Exit non-zero unless the image and text indexes and the metadata agree with the embeddings."""
    metadata = pq.read_table(f"{index}/metadata").to_pandas()
    for kind, folder in (("image", "img_emb"), ("text", "text_emb")):
        files = sorted(glob.glob(f"{embeddings}/{folder}/*.npy"))
        if not files:
            print(f"{kind}: no embeddings (a text-only or image-only job)")
            continue
        vectors = np.concatenate([np.load(f) for f in files]).astype("float32")
        found = faiss.read_index(f"{index}/{kind}.index")
        _, ids = found.search(vectors, 1)
        self_hits = float((ids[:, 0] == np.arange(len(vectors))).mean())
        wrong = wrong_first_hits(vectors, ids[:, 0])
        print(
            f"{kind}: {found.ntotal} vectors indexed of {len(vectors)}, first hit is itself for {self_hits:.0%}, "
            f"itself or an identical vector for {1 - len(wrong) / len(vectors):.0%}"
        )
        assert found.ntotal == len(vectors) == len(metadata), "index, embeddings and metadata disagree"
        assert not wrong, f"rows {wrong[:10]} find another vector first, not themselves nor an identical one"
    print(f"metadata: {len(metadata)} rows, columns {list(metadata.columns)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
