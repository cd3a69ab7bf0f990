"""Planning at corpus scale: tars planned from metadata (img2dataset's shard parquet, wids indexes), checked when
read; img2dataset's three layouts read alike; bounded header reads; key collisions from per-source digests."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from img2dataset_layouts import corpus, jpeg, write_corpus
from PIL import Image

from pipelines import records
from pipelines.readers import plan_images
from pipelines.readers.ranged import RangedFile
from pipelines.readers.tar_keys import KeyDigest, needs_prefixes, overlapping_groups
from pipelines.readers.webdataset_tars import TarDamage, scan_tar

pytestmark = pytest.mark.usefixtures("ray_local")

FAILED = {1, 4, 7}  # img2dataset failures among the 12 URLs (1 fails to resize, the others to download)


def read_all(planned) -> dict[str, dict]:
    rows = [row for table in ray.get(planned.to_dataset().to_arrow_refs()) for row in table.to_pylist()]
    by_key = {row[records.KEY]: row for row in rows}
    assert len(by_key) == len(rows) == planned.num_records, "one row per planned record, unique keys"
    return by_key


def plan_shape(planned) -> list[list[tuple[str, int, int]]]:
    return [[(s.source.uri, s.start, s.stop) for s in u.segments] for u in planned.units]


def formats_of(planned) -> set[str]:
    return {type(s.source.format).__name__ for u in planned.units for s in u.segments}


# --- img2dataset's three layouts ---------------------------------------------------------------------------


@pytest.mark.slow
def test_three_img2dataset_layouts_give_the_same_records_and_keys(tmp_path: Path) -> None:
    urls = corpus(12, failed=FAILED)
    keys = {}
    for layout in ("webdataset", "files", "parquet"):
        keys[layout] = write_corpus(tmp_path / layout, urls, layout=layout, per_shard=5)
    assert keys["webdataset"] == keys["files"] == keys["parquet"]
    success = set(keys["webdataset"])
    assert (
        len(success) == 9 and {"000000", "000002", "000010", "000021"} <= success
    )  # shard 1 row 0, shard 2 row 1
    seen = {}
    for layout in ("webdataset", "files", "parquet"):
        planned = plan_images(str(tmp_path / layout), unit_size=4, keep_fields=["url", "sha256"])
        assert planned.num_records == 9, layout  # metadata parquets and stats files are not records
        assert planned.excluded == {"img2dataset failed_to_download": 2, "img2dataset failed_to_resize": 1}
        rows = read_all(planned)
        assert set(rows) == success, layout  # img2dataset's own key in every layout
        assert all(row["read_error"] is None for row in rows.values()), layout
        seen[layout] = {
            k: (row["prompt"], row["image_bytes"], json.loads(row["metadata"])) for k, row in rows.items()
        }
    assert seen["webdataset"] == seen["files"] == seen["parquet"]
    for caption, image, fields in seen["parquet"].values():
        index = int(fields["url"].rsplit("/", 1)[1].split(".")[0])
        assert caption == f"caption {index}" and image == urls[index].image
    webdataset = plan_images(str(tmp_path / "webdataset"), unit_size=4)
    assert formats_of(webdataset) == {"Img2datasetTar"}
    assert formats_of(plan_images(str(tmp_path / "parquet"), unit_size=4)) == {"Img2datasetParquet"}


def test_metadata_plan_equals_header_scan_plan_on_the_same_shards(tmp_path: Path) -> None:
    urls = corpus(23, failed={3, 11})
    write_corpus(tmp_path / "meta", urls, layout="webdataset", per_shard=10)
    shutil.copytree(tmp_path / "meta", tmp_path / "scan")
    for parquet in (tmp_path / "scan").glob("*.parquet"):
        parquet.unlink()
    by_metadata = plan_images(str(tmp_path / "meta"), unit_size=4)
    by_scan = plan_images(str(tmp_path / "scan"), unit_size=4)
    assert formats_of(by_metadata) == {"Img2datasetTar"} and formats_of(by_scan) == {"WebdatasetTar"}

    def relative(planned, root: Path) -> list:
        return [[(uri.replace(str(root), ""), a, b) for uri, a, b in unit] for unit in plan_shape(planned)]

    assert relative(by_metadata, tmp_path / "meta") == relative(by_scan, tmp_path / "scan")
    assert by_metadata.num_records == by_scan.num_records == 21 and by_metadata.num_units == 6
    meta_rows, scan_rows = read_all(by_metadata), read_all(by_scan)
    assert set(meta_rows) == set(scan_rows)
    for key, row in meta_rows.items():
        assert row["unit"] == scan_rows[key]["unit"] and row["image_bytes"] == scan_rows[key]["image_bytes"]
        assert row["read_error"] is None


def test_resume_identity_is_the_same_for_both_ways_of_planning(tmp_path: Path) -> None:
    write_corpus(tmp_path, corpus(14, failed={2}), layout="webdataset", per_shard=10)
    by_metadata = plan_images(str(tmp_path), unit_size=3)
    for parquet in tmp_path.glob("*.parquet"):
        parquet.unlink()
    by_scan = plan_images(str(tmp_path), unit_size=3)
    assert [u.input_hash for u in by_metadata.units] == [u.input_hash for u in by_scan.units]
    assert [u.num_records for u in by_metadata.units] == [u.num_records for u in by_scan.units]


def test_metadata_plan_reads_no_tar_byte(tmp_path: Path) -> None:
    write_corpus(tmp_path, corpus(6), layout="webdataset", per_shard=10)
    tar = tmp_path / "00000.tar"
    tar.write_bytes(b"\0" * tar.stat().st_size)  # same size, no samples: only reading could notice
    planned = plan_images(str(tmp_path), unit_size=4)
    assert planned.num_records == 6 and planned.num_units == 2  # counted from the metadata alone
    rows = read_all(planned)
    assert all("does not match the metadata" in row["read_error"] for row in rows.values())


def without_sample(data: bytes, key: str) -> bytes:
    """The tar ``data`` with sample ``key`` removed (as if deleted after the metadata was written)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if not member.name.startswith(f"{key}."):
                dst.addfile(member, src.extractfile(member))
    return out.getvalue()


def with_sample(data: bytes, sample: dict) -> bytes:
    """The tar ``data`` with one more sample at its end."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, wds.TarWriter(out) as dst:
        for member in src.getmembers():
            dst.tarstream.addfile(member, src.extractfile(member))
        dst.write(sample)
    return out.getvalue()


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_tar_that_disagrees_with_its_metadata_is_caught_when_read(tmp_path: Path, change: str) -> None:
    keys = write_corpus(tmp_path, corpus(16), layout="webdataset", per_shard=8)
    shard0 = [k for k in keys if k.startswith("00000")]
    tar = tmp_path / "00000.tar"
    if change == "removed":
        tar.write_bytes(without_sample(tar.read_bytes(), shard0[4]))
    else:
        tar.write_bytes(with_sample(tar.read_bytes(), {"__key__": "000099", "jpg": jpeg(99), "txt": "new"}))
    planned = plan_images(str(tmp_path), unit_size=3)
    assert planned.num_records == 16  # the plan trusts the metadata
    rows = read_all(planned)  # one row per planned record: nothing lost, nothing shifted
    bad = {k for k, row in rows.items() if row["read_error"] is not None}
    if change == "removed":  # every slice from the removed sample on errs, under the metadata's keys
        assert bad == set(shard0[3:]) and set(rows) == set(keys)
        assert "sample 4 is" in rows[shard0[4]]["read_error"]
    else:  # the slice holding the tar's end errs, naming the sample the metadata does not list
        assert bad == set(shard0[6:]) and set(rows) == set(keys)
        assert "000099" in rows[shard0[7]]["read_error"]
    assert all("00000.parquet" in rows[k]["read_error"] for k in bad)
    good = set(rows) - bad
    by_key = {m["key"]: m for m in pq.read_table(tmp_path / "00000.parquet").to_pylist()}
    assert all(rows[k]["prompt"] == by_key[k]["caption"] for k in good if k in by_key)


# --- wids indexes ------------------------------------------------------------------------------------------


def write_wids_tars(folder: Path, counts: list[int]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    shardlist = []
    for t, n in enumerate(counts):
        path = folder / "shards" / f"part-{t}.tar"
        path.parent.mkdir(exist_ok=True)
        with wds.TarWriter(str(path)) as sink:
            for i in range(n):
                sink.write({"__key__": f"t{t}-{i:04d}", "jpg": jpeg(t * 100 + i), "txt": f"c{t}-{i}"})
        shardlist.append({"url": f"shards/part-{t}.tar", "nsamples": n, "filesize": path.stat().st_size})
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shardlist}
    (folder / "index.json").write_text(json.dumps(index))
    return index


def test_wids_index_plans_like_a_scan_and_a_wrong_count_is_caught(tmp_path: Path) -> None:
    index = write_wids_tars(tmp_path / "c", [5, 7])
    by_index = plan_images(str(tmp_path / "c" / "index.json"), unit_size=4)
    by_folder = plan_images(str(tmp_path / "c"), unit_size=4)  # the index found beside the shards
    (tmp_path / "c" / "index.json").unlink()
    by_scan = plan_images(str(tmp_path / "c"), unit_size=4)
    assert formats_of(by_index) == formats_of(by_folder) == {"IndexedTar"}
    assert plan_shape(by_index) == plan_shape(by_folder) == plan_shape(by_scan)
    assert [u.input_hash for u in by_index.units] == [u.input_hash for u in by_scan.units]
    rows, scanned = read_all(by_index), read_all(by_scan)
    assert set(rows) == set(scanned) and all(row["read_error"] is None for row in rows.values())
    assert {k: r["image_bytes"] for k, r in rows.items()} == {k: r["image_bytes"] for k, r in scanned.items()}

    index["shardlist"][1]["nsamples"] = 6  # the index misses the last sample of part-1
    (tmp_path / "c" / "index.json").write_text(json.dumps(index))
    wrong = plan_images(str(tmp_path / "c" / "index.json"), unit_size=4)
    assert wrong.num_records == 11
    rows = read_all(wrong)
    bad = [row for row in rows.values() if row["read_error"] is not None]
    assert len(bad) == 3 and all("more than the 6 samples" in row["read_error"] for row in bad)
    assert all("wids index" in row["read_error"] for row in bad)


# --- bounded reads and key digests ------------------------------------------------------------------------


def noise_jpeg(seed: int, side: int = 160) -> bytes:
    """A JPEG of noise (about 25 KB at 160 px, like a photo of that size; flat images are tiny)."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_header_scan_on_s3_reads_headers_only(
    s3_bucket: str, s3fs_storage_options: dict, tmp_path: Path
) -> None:
    samples = [{"__key__": f"k{i:03d}", "jpg": noise_jpeg(i), "txt": f"c{i}"} for i in range(40)]
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        for sample in samples:
            sink.write(sample)
    data = (tmp_path / "a.tar").read_bytes()
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    fs.pipe_file(f"{s3_bucket}/a.tar", data)
    f = RangedFile(fs, f"{s3_bucket}/a.tar", len(data))
    items = list(scan_tar(f, 0))
    assert [i.key for i in items if not isinstance(i, TarDamage)] == [s["__key__"] for s in samples]
    assert f.fetched < 0.25 * len(data) and f.requests <= 4 * len(samples) + 2  # 4.5 KiB of headers a sample
    planned = plan_images(f"s3://{s3_bucket}/a.tar", unit_size=16, storage_options=s3fs_storage_options)
    rows = read_all(planned)
    assert [rows[s["__key__"]]["image_bytes"] for s in samples] == [s["jpg"] for s in samples]


def test_key_collisions_are_found_from_digests_and_exact_checks(tmp_path: Path) -> None:
    apart = [KeyDigest.of(["a1", "a2"]), KeyDigest.of(["b1", "b2"]), KeyDigest(count=3, declared=True)]
    assert overlapping_groups(apart) == []
    assert not needs_prefixes(apart, lambda groups: pytest.fail("no exact check needed"))
    interleaved = [KeyDigest.of(["a", "c"]), KeyDigest.of(["b", "d"]), KeyDigest.of(["x"])]
    assert overlapping_groups(interleaved) == [[0, 1]]
    assert not needs_prefixes(interleaved, lambda groups: [False] * len(groups))
    assert needs_prefixes([KeyDigest.of(["a", "a"])], lambda groups: [])  # a repeat inside one source
    # interleaved keys that do not collide stay bare; a shared key prefixes every keyed source
    for name, keys in (("x", ["k0", "k2"]), ("y", ["k1", "k3"])):
        with wds.TarWriter(str(tmp_path / f"{name}.tar")) as sink:
            for k in keys:
                sink.write({"__key__": k, "jpg": jpeg(len(k))})
    assert set(read_all(plan_images(str(tmp_path), unit_size=10))) == {"k0", "k1", "k2", "k3"}
    with wds.TarWriter(str(tmp_path / "z.tar")) as sink:
        sink.write({"__key__": "k2", "jpg": jpeg(5)})
    keys = set(read_all(plan_images(str(tmp_path), unit_size=10)))
    assert keys == {"x/k0", "x/k2", "y/k1", "y/k3", "z/k2"}


def test_a_parquet_beside_a_tar_without_key_and_status_is_not_metadata(tmp_path: Path) -> None:
    write_corpus(tmp_path, corpus(4), layout="webdataset", per_shard=10)
    pq.write_table(pa.table({"url": ["u"] * 4}), tmp_path / "00000.parquet")  # not img2dataset's metadata
    planned = plan_images(str(tmp_path), unit_size=10)
    assert formats_of(planned) == {"WebdatasetTar"} and planned.num_records == 4  # scanned instead
