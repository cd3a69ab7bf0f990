"""Check an index that ``clip-retrieval index`` built from a job's ``embeddings/`` folder.

Runs inside the isolated clip-retrieval environment (see check.sh): every vector was indexed, each embedding
finds itself first, and the metadata rows line up with the index ids (clip-retrieval maps id i to row i).
"""

import glob
import sys

import faiss
import numpy as np
import pyarrow.parquet as pq


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
        print(
            f"{kind}: {found.ntotal} vectors indexed of {len(vectors)}, first hit is itself for {self_hits:.0%}"
        )
        assert found.ntotal == len(vectors) == len(metadata), "index, embeddings and metadata disagree"
        assert self_hits == 1.0, "an embedding does not find itself first"
    print(f"metadata: {len(metadata)} rows, columns {list(metadata.columns)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
