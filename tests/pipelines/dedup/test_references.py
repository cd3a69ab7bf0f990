"""Reference sets: clip-retrieval folders and parquet on S3, records within the threshold removed, bad input."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dedup.references import (
    ReferenceError,
    ReferenceSpec,
    load_reference,
    reference_removals,
    validate_reference,
)
from pipelines.dedup.vectors import ArrayVectors, NpyVectors
from pipelines.writers.embeddings import metadata_table, npy_bytes

DIM = 48


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_clip_retrieval(fs, root: str, parts: list[tuple[list[str], np.ndarray]], names=None) -> None:
    """Parts as the pipeline's writer lays them out (embeddings/img_emb + embeddings/metadata)."""
    for i, (keys, matrix) in enumerate(parts):
        part = names[i] if names else f"{i:05d}"
        fs.makedirs(f"{root}/img_emb", exist_ok=True)
        fs.makedirs(f"{root}/metadata", exist_ok=True)
        rows = [{"key": k, "text": f"caption of {k}"} for k in keys]
        fs.pipe_file(f"{root}/img_emb/img_emb_{part}.npy", npy_bytes(matrix))
        table = metadata_table(rows, [f"images/{k}.jpg" for k in keys])
        fs.pipe_file(f"{root}/metadata/metadata_{part}.parquet", parquet_bytes(table))


@pytest.fixture()
def job_and_coco(s3_bucket: str, s3fs_storage_options: dict, near_copy):
    """A job's vectors (three of them contaminated) and a COCO-like reference in clip-retrieval layout on S3."""
    rng = np.random.default_rng(0)
    reference = unit(rng, 300)
    reference[17] = 0.0  # a record without an embedding: clip-retrieval's zero placeholder
    ids = [f"{i:012d}" for i in range(300)]
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    root = f"{s3_bucket}/coco-val2017/embeddings"
    write_clip_retrieval(fs, root, [(ids[:120], reference[:120]), (ids[120:], reference[120:])])
    job = unit(rng, 500)
    job[5] = near_copy(rng, reference[139], 0.97)
    job[6] = reference[250]
    job[7] = near_copy(rng, reference[10], 0.90)  # below the threshold
    job[8] = near_copy(rng, reference[3], 0.96)
    return job, f"s3://{root}"


def test_records_near_a_reference_are_removed_with_its_id(job_and_coco, s3fs_storage_options) -> None:
    job, uri = job_and_coco
    spec = ReferenceSpec(name="coco-val2017", uri=uri, threshold=0.95)
    assert validate_reference(spec, DIM, s3fs_storage_options) == []
    reference = load_reference(spec, DIM, s3fs_storage_options)
    assert len(reference.ids) == 299 and "000000000017" not in reference.ids  # the zero row is dropped
    assert np.allclose(np.linalg.norm(reference.vectors, axis=1), 1.0, atol=1e-5)
    keys = [f"job-{i}" for i in range(500)]
    removals = reference_removals(keys, ArrayVectors(job), [reference])
    assert [(r.key, r.reference_id) for r in removals] == [
        ("job-5", "000000000139"),
        ("job-6", "000000000250"),
        ("job-8", "000000000003"),
    ]
    assert removals[0].reason == "near-duplicate of reference coco-val2017:000000000139"
    assert removals[0].similarity == pytest.approx(0.97, abs=1e-5)
    assert removals[1].similarity == pytest.approx(1.0, abs=1e-5)


def test_job_vectors_read_from_npy_files_on_s3(job_and_coco, s3_bucket, s3fs_storage_options) -> None:
    job, uri = job_and_coco
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    paths = []
    for u, (a, b) in enumerate([(0, 200), (200, 500)]):
        paths.append(f"s3://{s3_bucket}/job/embeddings/img_emb/img_emb_{u:05d}.npy")
        fs.pipe_file(paths[-1], npy_bytes(job[a:b]))
    vectors = NpyVectors.open(paths, s3fs_storage_options)
    assert len(vectors) == 500 and vectors.dim == DIM
    assert np.array_equal(vectors.take(np.array([499, 0, 250])), job[[499, 0, 250]])
    reference = load_reference(ReferenceSpec("coco-val2017", uri, 0.95), DIM, s3fs_storage_options)
    removals = reference_removals([f"job-{i}" for i in range(500)], vectors, [reference])
    assert [r.key for r in removals] == ["job-5", "job-6", "job-8"]


def test_parquet_reference_and_the_most_similar_reference_wins(
    job_and_coco, s3_bucket, s3fs_storage_options, near_copy
) -> None:
    job, coco_uri = job_and_coco
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50) * 3.0  # not normalised: loading normalises
    vectors[0] = near_copy(rng, job[5], 0.99) * 2.0  # closer to job-5 than COCO's 0.97
    vectors[1] = near_copy(rng, job[100], 0.951)
    table = pa.table(
        {
            "id": [f"eval-{i}" for i in range(50)],
            "embedding": pa.array(vectors.tolist(), pa.list_(pa.float32())),
        }
    )
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    fs.pipe_file(f"{s3_bucket}/evals/part-0.parquet", parquet_bytes(table.slice(0, 20)))
    fs.pipe_file(f"{s3_bucket}/evals/part-1.parquet", parquet_bytes(table.slice(20)))
    evals = ReferenceSpec("my-eval", f"s3://{s3_bucket}/evals", 0.95)
    single = ReferenceSpec("my-eval", f"s3://{s3_bucket}/evals/part-0.parquet", 0.95)
    assert validate_reference(evals, DIM, s3fs_storage_options) == []
    assert len(load_reference(single, DIM, s3fs_storage_options).ids) == 20
    references = [
        load_reference(ReferenceSpec("coco-val2017", coco_uri, 0.95), DIM, s3fs_storage_options),
        load_reference(evals, DIM, s3fs_storage_options),
    ]
    removals = reference_removals([f"job-{i}" for i in range(500)], ArrayVectors(job), references)
    assert [r.reason for r in removals] == [
        "near-duplicate of reference my-eval:eval-0",
        "near-duplicate of reference coco-val2017:000000000250",
        "near-duplicate of reference coco-val2017:000000000003",
        "near-duplicate of reference my-eval:eval-1",
    ]


def test_each_reference_has_its_own_threshold(job_and_coco, s3fs_storage_options) -> None:
    job, uri = job_and_coco
    loose = load_reference(ReferenceSpec("coco-val2017", uri, 0.85), DIM, s3fs_storage_options)
    removals = reference_removals([f"job-{i}" for i in range(500)], ArrayVectors(job), [loose])
    assert [r.key for r in removals] == ["job-5", "job-6", "job-7", "job-8"]


def test_embedding_size_differs_from_the_jobs(job_and_coco, s3fs_storage_options) -> None:
    _, uri = job_and_coco
    spec = ReferenceSpec("coco-val2017", uri, 0.95)
    problems = validate_reference(spec, 768, s3fs_storage_options)
    assert len(problems) == 2  # one per file
    assert problems[0].startswith("reference coco-val2017: embedding size 48")
    assert "differs from the job's embedding size 768" in problems[0]
    with pytest.raises(ReferenceError, match="coco-val2017: embedding size 48 .* job's embedding size 768"):
        load_reference(spec, 768, s3fs_storage_options)
    reference = load_reference(spec, None, s3fs_storage_options)
    with pytest.raises(ReferenceError, match="embedding size 48 differs from the job's embedding size 32"):
        reference_removals(["a"], ArrayVectors(np.ones((1, 32), np.float32)), [reference])


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_threshold_outside_zero_one(job_and_coco, s3fs_storage_options, threshold: float) -> None:
    _, uri = job_and_coco
    spec = ReferenceSpec("coco-val2017", uri, threshold)
    assert validate_reference(spec, DIM, s3fs_storage_options) == [
        f"reference coco-val2017: threshold must be in (0, 1], got {threshold}"
    ]
    with pytest.raises(ReferenceError, match="threshold must be in"):
        load_reference(spec, DIM, s3fs_storage_options)


def test_unreadable_files_are_named(tmp_path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "ref"
    fs = fsspec.filesystem("file")
    write_clip_retrieval(fs, str(root), [(["a", "b"], unit(rng, 2)), (["c"], unit(rng, 1))])
    (root / "img_emb" / "img_emb_00001.npy").write_bytes(b"garbage, not numpy")
    spec = ReferenceSpec("broken", str(root), 0.9)
    problems = validate_reference(spec, DIM)
    assert len(problems) == 1 and "img_emb_00001.npy: not a readable .npy file" in problems[0]
    assert problems[0].startswith("reference broken: ")
    with pytest.raises(ReferenceError, match="img_emb_00001.npy: not a readable .npy file"):
        load_reference(spec, DIM)
    (root / "img_emb" / "img_emb_00001.npy").write_bytes(npy_bytes(unit(rng, 1)))
    (root / "metadata" / "metadata_00000.parquet").write_bytes(b"PAR1 truncated")
    assert "metadata_00000.parquet: not a readable parquet file" in validate_reference(spec, DIM)[0]


def test_misaligned_and_unpaired_files(tmp_path) -> None:
    rng = np.random.default_rng(3)
    fs = fsspec.filesystem("file")
    root = tmp_path / "ref"
    write_clip_retrieval(fs, str(root), [(["a", "b", "c"], unit(rng, 3))])
    (root / "img_emb" / "img_emb_00000.npy").write_bytes(npy_bytes(unit(rng, 2)))
    problems = validate_reference(ReferenceSpec("r", str(root), 0.9), DIM)
    assert problems == [
        f"reference r: {root}/img_emb/img_emb_00000.npy has 2 rows but "
        f"{root}/metadata/metadata_00000.parquet has 3: rows must align"
    ]
    (root / "img_emb" / "img_emb_00007.npy").write_bytes(npy_bytes(unit(rng, 2)))
    problems = validate_reference(ReferenceSpec("r", str(root), 0.9), DIM)
    assert problems == [
        f"reference r: {root}/img_emb/img_emb_00007.npy has no metadata file metadata_00007.parquet"
    ]


def test_missing_columns_and_layouts(tmp_path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"name": ["a"], "vector": [unit(rng, 1)[0].tolist()]}), path)
    problems = validate_reference(ReferenceSpec("r", str(path), 0.9), DIM)
    assert len(problems) == 1 and "has none of the id columns ('key', 'image_path', 'id')" in problems[0]
    spec = ReferenceSpec("r", str(path), 0.9, id_column="name")
    assert "has no embedding column any of ('embedding'" in validate_reference(spec, DIM)[0]
    spec = ReferenceSpec("r", str(path), 0.9, id_column="name", embedding_column="vector")
    assert validate_reference(spec, DIM) == []
    assert load_reference(spec, DIM).ids == ["a"]
    pq.write_table(pa.table({"id": ["a"], "embedding": ["not a list"]}), path)
    assert (
        "embedding column 'embedding' is string, not a list of floats"
        in validate_reference(ReferenceSpec("r", str(path), 0.9), DIM)[0]
    )
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[0.1] * DIM, [0.1] * 3]}), path)
    with pytest.raises(ReferenceError, match="embedding row 1 has 3 values, row 0 has 48"):
        load_reference(ReferenceSpec("r", str(path), 0.9), DIM)
    (tmp_path / "empty").mkdir()
    assert (
        "neither a clip-retrieval embeddings folder"
        in validate_reference(ReferenceSpec("r", str(tmp_path / "empty"), 0.9), DIM)[0]
    )
    assert "no such file or folder" in validate_reference(ReferenceSpec("r", str(tmp_path / "nope"), 0.9))[0]


def test_reference_names_must_be_safe_in_reasons(tmp_path) -> None:
    problems = validate_reference(ReferenceSpec("coco:val", str(tmp_path / "nope"), 0.9))
    assert problems[0].startswith("reference name 'coco:val' must be letters, digits")
