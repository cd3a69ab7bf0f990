"""Readers: every input format, folders/globs, local and S3, accounting of bad records, units as blocks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image

from pipelines import records
from pipelines.readers import (
    plan_count,
    plan_images,
    plan_prompts,
    prompt_formats,
    read_count,
    read_images,
    read_prompts,
)
from pipelines.readers.formats import Unreadable
from pipelines.readers.naming import unique_names
from pipelines.readers.plan import Source, plan_units

pytestmark = pytest.mark.usefixtures("ray_local")


# --- helpers -------------------------------------------------------------------------------------------------


def blocks(ds: ray.data.Dataset) -> list[pa.Table]:
    """The dataset's blocks, each as an Arrow table."""
    return ray.get(ds.to_arrow_refs())


def rows_by_key(ds: ray.data.Dataset) -> dict[str, dict]:
    rows = ds.take_all()
    by_key = {row[records.KEY]: row for row in rows}
    assert len(by_key) == len(rows), "keys must be unique"
    return by_key


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 5), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict]) -> bytes:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path.read_bytes()


def uri(path: Path) -> str:
    return f"file://{path}"


# --- prompts -------------------------------------------------------------------------------------------------


def test_txt_lines_blank_lines_and_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes("\ufefffirst\r\n\nthird\nfourth\n".encode())
    ds = read_prompts(str(tmp_path / "p.txt"), unit_size=10)
    rows = rows_by_key(ds)
    assert sorted(rows) == [f"p-{i:09d}" for i in range(4)]  # trailing newline makes no record
    assert [rows[f"p-{i:09d}"]["prompt"] for i in range(4)] == ["first", "", "third", "fourth"]
    assert all(row["read_error"] is None for row in rows.values())  # "" is a prompt: later stages judge it
    assert {row["source"] for row in rows.values()} == {uri(tmp_path / "p.txt")}
    assert {row["unit"] for row in rows.values()} == {0}
    assert ds.schema().base_schema == records.READER_SCHEMA


def test_txt_without_final_newline_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\ny")
    (tmp_path / "b.txt").write_text("")
    planned = plan_prompts(str(tmp_path), unit_size=10)
    assert planned.num_records == 2
    assert [r["prompt"] for r in sorted(planned.to_dataset().take_all(), key=lambda r: r["key"])] == [
        "x",
        "y",
    ]


def test_txt_large_file_is_sliced_across_units_via_offsets(tmp_path: Path, monkeypatch) -> None:
    lines = [f"prompt number {i}" for i in range(103)]
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(prompt_formats, "CHUNK", 7)  # exercise chunk boundaries in line indexing
    planned = plan_prompts(str(tmp_path / "big.txt"), unit_size=10)
    (source,) = {seg.source for unit in planned.units for seg in unit.segments}
    assert source.num_records == 103 and source.stride == 10
    assert len(source.offsets) == 11
    data = (tmp_path / "big.txt").read_bytes()
    for j, offset in enumerate(source.offsets):  # each offset is the start of line j * 10
        assert data[offset:].startswith(f"prompt number {j * 10}\n".encode())
    rows = rows_by_key(planned.to_dataset())
    assert [rows[f"big-{i:09d}"]["prompt"] for i in range(103)] == lines
    assert [rows[f"big-{i:09d}"]["unit"] for i in (0, 9, 10, 102)] == [0, 0, 1, 10]


def test_jsonl_fields_and_bad_records_are_kept_with_reasons(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "a cat"}),
        json.dumps({"text": "a dog"}),
        "",
        json.dumps({"prompt": 7}),
        "{not json",
        json.dumps({"other": "x"}),
        json.dumps(["a", "list"]),
        json.dumps({"prompt": None}),
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    rows = rows_by_key(read_prompts(str(tmp_path / "p.jsonl"), unit_size=3))
    assert len(rows) == len(lines)
    got = [(rows[f"p-{i:09d}"]["prompt"], rows[f"p-{i:09d}"]["read_error"]) for i in range(len(lines))]
    assert got[0] == ("a cat", None)
    assert got[1] == ("a dog", None)
    assert got[2][0] is None and "empty line" in got[2][1]
    assert got[3][0] is None and "not a string" in got[3][1] and "int" in got[3][1]
    assert got[4][0] is None and got[4][1].startswith("invalid JSON")
    assert got[5][0] is None and "missing field" in got[5][1] and "other" in got[5][1]
    assert got[6][0] is None and "expected a JSON object" in got[6][1]
    assert got[7][0] is None and "null" in got[7][1]


def test_jsonl_named_field(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "ignored", "caption": "used"}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    rows = rows_by_key(read_prompts(str(tmp_path), field="caption", unit_size=5))
    assert rows["p-000000000"]["prompt"] == "used"
    assert rows["p-000000001"]["prompt"] is None
    assert "missing field 'caption'" in rows["p-000000001"]["read_error"]


def test_json_array_and_not_an_array(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps([{"prompt": "one"}, {"text": "two"}, {"x": 1}]))
    (tmp_path / "bad.json").write_text(json.dumps({"prompt": "not in an array"}))
    (tmp_path / "broken.json").write_text("[{")
    rows = rows_by_key(read_prompts(str(tmp_path), unit_size=2))
    assert rows["good-000000000"]["prompt"] == "one"
    assert rows["good-000000001"]["prompt"] == "two"
    assert "missing field" in rows["good-000000002"]["read_error"]
    assert "expected a JSON array" in rows["bad-000000000"]["read_error"]
    assert "cannot read" in rows["broken-000000000"]["read_error"]
    assert len(rows) == 5


def test_csv_and_tsv_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,prompt\n1,"a red, round apple"\n2,\n3,"two\nlines"\n4,123\n')
    (tmp_path / "b.tsv").write_text("text\tscore\nhello\t1\n")
    (tmp_path / "c.csv").write_text("id,caption\n1,x\n2,y\n")
    rows = rows_by_key(read_prompts(str(tmp_path), unit_size=3))
    assert [rows[f"a-{i:09d}"]["prompt"] for i in range(4)] == ["a red, round apple", "", "two\nlines", "123"]
    assert rows["b-000000000"]["prompt"] == "hello"
    for i in range(2):  # no prompt/text column: every row is accounted for as an error
        assert rows[f"c-{i:09d}"]["prompt"] is None
        assert "missing column" in rows[f"c-{i:09d}"]["read_error"]
    assert len(rows) == 4 + 1 + 2
    named = rows_by_key(read_prompts(str(tmp_path / "c.csv"), field="caption", unit_size=3))
    assert [named[f"c-{i:09d}"]["prompt"] for i in range(2)] == ["x", "y"]


def test_parquet_prompts_row_groups_sliced_across_units(tmp_path: Path) -> None:
    values = [f"p{i}" if i % 5 else None for i in range(23)]
    pq.write_table(pa.table({"text": values, "n": list(range(23))}), tmp_path / "p.parquet", row_group_size=4)
    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "ints.parquet")
    planned = plan_prompts(str(tmp_path), unit_size=6)
    assert planned.num_records == 25 and planned.num_units == 5
    rows = rows_by_key(planned.to_dataset())
    for i, value in enumerate(values):
        row = rows[f"p-{i:09d}"]
        assert row["prompt"] == value
        assert (row["read_error"] is None) == (value is not None)
    assert "not a string" in rows["ints-000000000"]["read_error"]


def test_kept_fields_travel_as_metadata_in_every_prompt_format(tmp_path: Path) -> None:
    lines = [
        {"prompt": "a", "id": 1, "url": "u1"},
        {"prompt": "b", "id": 2},
        "not json",
        {"text": "c", "id": 3},
    ]
    (tmp_path / "l.jsonl").write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    )
    (tmp_path / "j.json").write_text(json.dumps([{"prompt": "d", "id": 4, "url": "u4"}, 5]))
    (tmp_path / "c.csv").write_text("id,prompt,url\n6,e,u6\n7,,\n")
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(9)], "id": list(range(9))}),
                   tmp_path / "p.parquet", row_group_size=2)  # fmt: skip
    (tmp_path / "t.txt").write_text("plain\n")
    planned = plan_prompts(str(tmp_path), unit_size=4, keep_fields=["id", "url"])
    rows = rows_by_key(planned.to_dataset())
    meta = {key: json.loads(row["metadata"]) for key, row in rows.items()}
    assert [meta[f"l-{i:09d}"] for i in range(4)] == [
        {"id": 1, "url": "u1"}, {"id": 2, "url": None}, {"id": None, "url": None}, {"id": 3, "url": None},
    ]  # fmt: skip
    assert rows["l-000000002"]["read_error"].startswith("invalid JSON")  # still an error, with null fields
    assert [meta[f"j-{i:09d}"] for i in range(2)] == [{"id": 4, "url": "u4"}, {"id": None, "url": None}]
    assert [meta[f"c-{i:09d}"] for i in range(2)] == [
        {"id": 6, "url": "u6"},
        {"id": 7, "url": ""},
    ]  # CSV: empty
    assert [meta[f"p-{i:09d}"] for i in range(9)] == [{"id": i, "url": None} for i in range(9)]
    assert [rows[f"p-{i:09d}"]["prompt"] for i in range(9)] == [f"q{i}" for i in range(9)]
    assert meta["t-000000000"] == {"id": None, "url": None}
    plain = rows_by_key(plan_prompts(str(tmp_path / "l.jsonl"), unit_size=4).to_dataset())
    assert all(row["metadata"] is None for row in plain.values())  # nothing kept unless asked


def test_folder_glob_unsupported_and_duplicate_stems(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("top\n")
    (tmp_path / "sub" / "a.txt").write_text("nested\n")
    (tmp_path / "notes.md").write_text("# not prompts\n")
    (tmp_path / ".hidden.txt").write_text("skipped\n")
    (tmp_path / "_SUCCESS").write_text("")
    rows = rows_by_key(read_prompts(uri(tmp_path), unit_size=10))
    assert rows["a-000000000"]["prompt"] == "top"  # stems collide: relative paths tell them apart
    assert rows["sub/a-000000000"]["prompt"] == "nested"
    assert "unsupported prompt file" in rows["notes-000000000"]["read_error"]
    assert len(rows) == 3
    globbed = rows_by_key(read_prompts(str(tmp_path / "**" / "*.txt"), unit_size=10))
    assert {row["prompt"] for row in globbed.values()} == {"top", "nested"}


def test_missing_input_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        plan_prompts(str(tmp_path / "nope.txt"), unit_size=2)


def test_file_changed_after_planning_becomes_error_records(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1\n2\n3\n")
    planned = plan_prompts(str(tmp_path), unit_size=1)
    (tmp_path / "a.txt").write_text("1\n")
    rows = rows_by_key(planned.to_dataset())
    assert len(rows) == 3  # still every planned record
    assert rows["a-000000000"]["prompt"] == "1"
    for key in ("a-000000001", "a-000000002"):
        assert rows[key]["prompt"] is None
        assert (
            rows[key]["read_error"].startswith("read failed") and "since planning" in rows[key]["read_error"]
        )


def test_prompts_on_s3_with_and_without_storage_options(s3_bucket: str, s3fs_storage_options: dict) -> None:
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    fs.pipe_file(f"{s3_bucket}/in/a.txt", b"one\ntwo\n")
    fs.pipe_file(f"{s3_bucket}/in/b.jsonl", b'{"prompt": "three"}\n')
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["four"]}), buffer)
    fs.pipe_file(f"{s3_bucket}/in/c.parquet", buffer.getvalue())
    for options in (s3fs_storage_options, None):
        rows = rows_by_key(read_prompts(f"s3://{s3_bucket}/in", unit_size=2, storage_options=options))
        assert {k: r["prompt"] for k, r in rows.items()} == {
            "a-000000000": "one",
            "a-000000001": "two",
            "b-000000000": "three",
            "c-000000000": "four",
        }
        assert rows["a-000000000"]["source"] == f"s3://{s3_bucket}/in/a.txt"
    globbed = rows_by_key(read_prompts(f"s3://{s3_bucket}/in/*.txt", unit_size=2))
    assert set(globbed) == {"a-000000000", "a-000000001"}


# --- units ---------------------------------------------------------------------------------------------------


def test_each_unit_is_one_block_and_survives_map_batches(tmp_path: Path) -> None:
    for name, n in (("a", 7), ("b", 1), ("c", 12)):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name}{i}\n" for i in range(n)))
    planned = plan_prompts(str(tmp_path), unit_size=5)
    assert [u.num_records for u in planned.units] == [5, 5, 5, 5]
    ds = planned.to_dataset()
    tables = blocks(ds)
    assert len(tables) == planned.num_units
    assert sorted(t.num_rows for t in tables) == [5, 5, 5, 5]
    assert sorted(len(set(t.column("unit").to_pylist())) for t in tables) == [1, 1, 1, 1]

    def describe(batch):
        return {"unit": [sorted(set(batch["unit"].tolist()))], "n": [len(batch)]}

    out = ds.map_batches(lambda b: b, batch_size=None, batch_format="pandas")
    out = out.map_batches(describe, batch_size=None, batch_format="pandas").take_all()
    assert sorted((list(row["unit"]), row["n"]) for row in out) == [([u], 5) for u in range(4)]


def test_large_units_are_not_sliced_by_target_max_block_size(tmp_path: Path) -> None:
    """Ray slices blocks over 1.5 x target_max_block_size; a unit's dataset must opt out of that."""
    (tmp_path / "a.txt").write_text("".join("x" * 200 + f"{i}\n" for i in range(40)))  # ~8 KB per unit
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = 1024
    try:
        ds = read_prompts(str(tmp_path), unit_size=20)
        grown = ds.map_batches(
            lambda b: b.assign(pad=["y" * 500] * len(b)), batch_size=None, batch_format="pandas"
        )
        sizes = sorted(t.num_rows for t in blocks(grown))
    finally:
        ctx.target_max_block_size = saved
    assert sizes == [20, 20]


def test_units_are_deterministic_and_cross_files(tmp_path: Path) -> None:
    for name in ("c", "a", "b"):  # created out of order: the listing is sorted
        (tmp_path / f"{name}.txt").write_text("".join(f"{name}{i}\n" for i in range(3)))
    first = plan_prompts(str(tmp_path), unit_size=4)
    second = plan_prompts(str(tmp_path), unit_size=4)
    assert first.units == second.units
    layout = [[(s.source.name, s.start, s.stop) for s in u.segments] for u in first.units]
    assert layout == [[("a", 0, 3), ("b", 0, 1)], [("b", 1, 3), ("c", 0, 2)], [("c", 2, 3)]]
    rows = rows_by_key(first.to_dataset())
    assert [rows[k]["unit"] for k in ("a-000000000", "b-000000000", "b-000000001", "c-000000002")] == [
        0,
        0,
        1,
        2,
    ]


def test_skip_units_keeps_ids_and_accounts(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("".join(f"{i}\n" for i in range(10)))
    planned = plan_prompts(str(tmp_path), unit_size=3)
    assert planned.num_records == 10 and planned.num_units == 4
    assert planned.records_in({1, 3}) == 4
    rows = rows_by_key(read_prompts(str(tmp_path), unit_size=3, skip_units=frozenset({1, 3})))
    assert sorted({r["unit"] for r in rows.values()}) == [0, 2]
    assert sorted(int(r["prompt"]) for r in rows.values()) == [0, 1, 2, 6, 7, 8]
    assert plan_prompts(str(tmp_path), unit_size=3).to_dataset(frozenset(range(4))).count() == 0


def test_plan_units_and_unique_names() -> None:
    sources = [
        Source(uri=n, path=n, name=n, format=Unreadable(), num_records=k)
        for n, k in (("a", 0), ("b", 5), ("c", 1))
    ]
    units = plan_units(sources, 2)
    assert [[(s.source.name, s.start, s.stop) for s in u.segments] for u in units] == [
        [("b", 0, 2)],
        [("b", 2, 4)],
        [("b", 4, 5), ("c", 0, 1)],
    ]
    with pytest.raises(ValueError):
        plan_units(sources, 0)
    assert unique_names(["x.txt", "d/x.txt", "y.txt", "x.jsonl"]) == ["x_txt", "d/x", "y", "x_jsonl"]
    # dot-free and still unique: names whose dot-free forms coincide fall back to a hash of the path
    odd = unique_names(["a.b.png", "a_b.png", "v1.2/p.txt"], use_stem=False)
    assert odd[2] == "v1_2/p" and len(set(odd)) == 3 and not any("." in n for n in odd)
    assert odd == unique_names(["a.b.png", "a_b.png", "v1.2/p.txt"], use_stem=False)  # stable


# --- count ---------------------------------------------------------------------------------------------------


def test_read_count_units_keys_and_skip() -> None:
    planned = plan_count(10, unit_size=4)
    assert planned.num_records == 10 and planned.num_units == 3
    ds = read_count(10, unit_size=4)
    tables = blocks(ds)
    assert sorted(t.num_rows for t in tables) == [2, 4, 4]
    rows = rows_by_key(ds)
    assert sorted(rows) == [f"{i:09d}" for i in range(10)]
    assert all(
        r["source"] == "count" and r["prompt"] is None and r["image_bytes"] is None for r in rows.values()
    )
    assert rows["000000009"]["unit"] == 2
    skipped = rows_by_key(read_count(10, unit_size=4, skip_units=frozenset({0})))
    assert sorted(skipped) == [f"{i:09d}" for i in range(4, 10)]
    assert read_count(0, unit_size=4).count() == 0


# --- images --------------------------------------------------------------------------------------------------


def test_image_folder_with_sidecars_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    files = {
        "cats/a.png": png_bytes((255, 0, 0)),
        "cats/b.jpg": jpeg_bytes((0, 255, 0)),
        "c.webp": png_bytes((0, 0, 255)),  # by extension: decoding is a later stage's job
        "c.PNG": png_bytes((1, 2, 3)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "cats" / "a.txt").write_text("a caption sidecar")
    (tmp_path / "cats" / "a.json").write_text("{}")
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    rows = rows_by_key(read_images(str(tmp_path), unit_size=2))
    assert rows["cats/a"]["image_bytes"] == files["cats/a.png"]
    assert rows["cats/b"]["image_bytes"] == files["cats/b.jpg"]
    assert rows["c_webp"]["image_bytes"] == files["c.webp"]  # c.PNG and c.webp collide without extension
    assert rows["c_PNG"]["image_bytes"] == files["c.PNG"]
    assert rows["cats/a"]["source"] == uri(tmp_path / "cats" / "a.png")
    assert rows["notes"]["read_error"] == "not an image file: notes.md"
    assert rows["notes"]["image_bytes"] is None
    assert rows["empty"]["read_error"] == "empty image file"
    assert len(rows) == 6
    assert all(rows[k]["read_error"] is None for k in ("cats/a", "cats/b", "c_webp", "c_PNG"))
    assert Image.open(io.BytesIO(rows["cats/a"]["image_bytes"])).size == (6, 4)


def test_webdataset_tars_captions_and_missing_image(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "00000.tar",
        [
            {"__key__": "000000000", "jpg": jpeg_bytes((9, 9, 9)), "txt": "first caption", "json": {"a": 1}},
            {"__key__": "000000001", "png": png_bytes((1, 1, 1))},
            {"__key__": "000000002", "txt": "caption only", "json": {"a": 3}},
        ],
    )
    write_tar(tmp_path / "00001.tar", [{"__key__": "000010000", "webp": b"webp-bytes", "txt": "third"}])
    pq.write_table(pa.table({"key": ["000000000"]}), tmp_path / "00000.parquet")  # img2dataset sidecar
    (tmp_path / "00000_stats.json").write_text("{}")
    planned = plan_images(str(tmp_path), unit_size=2)
    assert planned.num_records == 4 and planned.num_units == 2
    rows = rows_by_key(planned.to_dataset())
    assert set(rows) == {"000000000", "000000001", "000000002", "000010000"}  # unique keys stay bare
    assert rows["000000000"]["prompt"] == "first caption"
    assert rows["000000000"]["image_bytes"] == jpeg_bytes((9, 9, 9))
    assert rows["000000001"]["prompt"] is None and rows["000000001"]["image_bytes"] == png_bytes((1, 1, 1))
    assert rows["000000002"]["image_bytes"] is None
    assert "no image in sample '000000002'" in rows["000000002"]["read_error"]
    assert rows["000010000"]["image_bytes"] == b"webp-bytes"
    assert rows["000010000"]["source"] == uri(tmp_path / "00001.tar")


def test_webdataset_tar_split_across_units_matches_whole_read(tmp_path: Path) -> None:
    samples = [{"__key__": f"s{i:03d}", "png": png_bytes((i, 0, 0)), "txt": f"c{i}"} for i in range(11)]
    write_tar(tmp_path / "a.tar", samples)
    small = plan_images(str(tmp_path), unit_size=3)
    (source,) = {seg.source for unit in small.units for seg in unit.segments}
    assert source.num_records == 11 and len(source.offsets) == 4
    assert small.num_units == 4
    rows = rows_by_key(small.to_dataset())
    whole = rows_by_key(read_images(str(tmp_path), unit_size=100))
    assert set(rows) == set(whole) == {f"s{i:03d}" for i in range(11)}
    for key, row in rows.items():
        assert (row["prompt"], row["image_bytes"]) == (whole[key]["prompt"], whole[key]["image_bytes"])
        assert row["prompt"] == f"c{int(key[1:])}"
        assert row["unit"] == int(key[1:]) // 3


def test_truncated_tar_yields_good_samples_and_one_error(tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i}", "png": png_bytes((i, i, i)), "txt": f"c{i}"} for i in range(4)]
    data = write_tar(tmp_path / "full.tar", samples)
    (tmp_path / "full.tar").unlink()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut_inside = next(m for m in tar.getmembers() if m.name == "k2.png").offset_data + 10
    (tmp_path / "cut.tar").write_bytes(data[:cut_inside])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar file at all" * 40)
    rows = rows_by_key(read_images(str(tmp_path), unit_size=2))
    good = {k: r for k, r in rows.items() if r["read_error"] is None}
    assert set(good) == {"k0", "k1"}
    assert good["k1"]["image_bytes"] == png_bytes((1, 1, 1)) and good["k1"]["prompt"] == "c1"
    error = rows["cut-error"]
    assert error["image_bytes"] is None
    assert "cut.tar" in error["read_error"] and "truncated or corrupt tar" in error["read_error"]
    assert "'k2' is cut" in error["read_error"]
    assert "garbage.tar" in rows["garbage-error"]["read_error"]
    assert len(rows) == 4


def test_tar_without_end_marker_is_reported(tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i}", "png": png_bytes((i, i, i))} for i in range(3)]
    data = write_tar(tmp_path / "a.tar", samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + ((last.size + 511) // 512) * 512
    (tmp_path / "a.tar").write_bytes(data[:end])  # every member whole, end-of-archive blocks missing
    rows = rows_by_key(read_images(str(tmp_path), unit_size=10))
    assert {k for k, r in rows.items() if r["read_error"] is None} == {"k0", "k1"}
    assert "end-of-archive" in rows["a-error"]["read_error"]


def test_tar_keys_colliding_across_tars_get_prefixes(tmp_path: Path) -> None:
    write_tar(tmp_path / "x.tar", [{"__key__": "0001", "png": png_bytes((1, 0, 0))}])
    write_tar(tmp_path / "y.tar", [{"__key__": "0001", "png": png_bytes((2, 0, 0))}])
    rows = rows_by_key(read_images(str(tmp_path), unit_size=10))
    assert rows["x/0001"]["image_bytes"] == png_bytes((1, 0, 0))
    assert rows["y/0001"]["image_bytes"] == png_bytes((2, 0, 0))


def test_parquet_images_binary_struct_and_named_columns(tmp_path: Path) -> None:
    images = [png_bytes((i, 0, 0)) for i in range(5)]
    pq.write_table(
        pa.table({"image": images[:3] + [None, b""], "caption": ["a", "b", None, "d", "e"]}),
        tmp_path / "bin.parquet",
        row_group_size=2,
    )
    struct = pa.array(
        [{"bytes": images[0], "path": "x.png"}, {"bytes": images[1], "path": "y.png"}],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"jpg": struct, "text": ["s0", "s1"]}), tmp_path / "hf.parquet")
    pq.write_table(pa.table({"pixels": images[:1]}), tmp_path / "other.parquet")
    rows = rows_by_key(read_images(str(tmp_path), unit_size=3))
    assert [rows[f"bin-{i:09d}"]["image_bytes"] for i in range(3)] == images[:3]
    assert [rows[f"bin-{i:09d}"]["prompt"] for i in range(3)] == ["a", "b", None]
    assert "no image bytes" in rows["bin-000000003"]["read_error"]
    assert "no image bytes" in rows["bin-000000004"]["read_error"]
    assert [rows[f"hf-{i:09d}"]["image_bytes"] for i in range(2)] == images[:2]
    assert rows["hf-000000001"]["prompt"] == "s1"
    assert "no image column" in rows["other-000000000"]["read_error"]
    named = rows_by_key(read_images(str(tmp_path / "other.parquet"), column="pixels", unit_size=3))
    assert named["other-000000000"]["image_bytes"] == images[0]


def test_images_on_s3(s3_bucket: str, s3fs_storage_options: dict, tmp_path: Path) -> None:
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    data = write_tar(
        tmp_path / "t.tar", [{"__key__": f"k{i}", "png": png_bytes((i, 0, 0))} for i in range(3)]
    )
    fs.pipe_file(f"{s3_bucket}/imgs/t.tar", data)
    fs.pipe_file(f"{s3_bucket}/imgs/loose/one.png", png_bytes((7, 7, 7)))
    rows = rows_by_key(
        read_images(f"s3://{s3_bucket}/imgs", unit_size=2, storage_options=s3fs_storage_options)
    )
    assert set(rows) == {"k0", "k1", "k2", "loose/one"}
    assert rows["loose/one"]["image_bytes"] == png_bytes((7, 7, 7))
    assert rows["k2"]["image_bytes"] == png_bytes((2, 0, 0))
    assert all(r["read_error"] is None for r in rows.values())


def test_image_file_sidecars_give_caption_and_kept_fields(tmp_path: Path) -> None:
    (tmp_path / "00000").mkdir()  # img2dataset's "files" layout
    for i in range(3):
        (tmp_path / "00000" / f"{i:09d}.jpg").write_bytes(jpeg_bytes((i, 0, 0)))
    (tmp_path / "00000" / "000000000.txt").write_text("a red thing\r\n")
    (tmp_path / "00000" / "000000000.json").write_text(json.dumps({"url": "http://x/0", "width": 5}))
    (tmp_path / "00000" / "000000001.json").write_text("[1, 2]")  # not an object: fields are null
    (tmp_path / "00000_stats.json").write_text("{}")
    rows = rows_by_key(read_images(str(tmp_path), unit_size=2, keep_fields=["url", "width"]))
    assert set(rows) == {f"00000/{i:09d}" for i in range(3)}
    first, second, third = (rows[f"00000/{i:09d}"] for i in range(3))
    assert first["prompt"] == "a red thing" and second["prompt"] is None
    assert json.loads(first["metadata"]) == {"url": "http://x/0", "width": 5}
    assert json.loads(second["metadata"]) == json.loads(third["metadata"]) == {"url": None, "width": None}
    assert all(row["read_error"] is None for row in rows.values())
    plain = rows_by_key(read_images(str(tmp_path), unit_size=2))
    assert plain["00000/000000000"]["prompt"] == "a red thing"  # the caption does not need keep_fields
    assert all(row["metadata"] is None for row in plain.values())


def test_kept_fields_of_tar_samples_and_parquet_rows(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "s.tar",
        [
            {"__key__": "k0", "png": png_bytes((1, 0, 0)), "json": {"url": "u0", "similarity": 0.3}},
            {"__key__": "k1", "png": png_bytes((2, 0, 0)), "json": b"{broken"},
            {"__key__": "k2", "png": png_bytes((3, 0, 0))},
            {"__key__": "k3", "json": {"url": "u3"}},  # no image: an error that still carries its fields
        ],
    )
    images = [png_bytes((i, 9, 9)) for i in range(5)]
    pq.write_table(pa.table({"image": images, "url": [f"p{i}" for i in range(5)]}),
                   tmp_path / "rows.parquet", row_group_size=2)  # fmt: skip
    planned = plan_images(str(tmp_path), unit_size=3, keep_fields=["url", "similarity"])
    rows = rows_by_key(planned.to_dataset())
    meta = {key: json.loads(row["metadata"]) for key, row in rows.items()}
    assert [meta[f"k{i}"] for i in range(4)] == [
        {"url": "u0", "similarity": 0.3}, {"url": None, "similarity": None},
        {"url": None, "similarity": None}, {"url": "u3", "similarity": None},
    ]  # fmt: skip
    assert rows["k1"]["read_error"] is None and rows["k1"]["image_bytes"] == png_bytes((2, 0, 0))
    assert "no image in sample 'k3'" in rows["k3"]["read_error"]
    assert [meta[f"rows-{i:09d}"] for i in range(5)] == [
        {"url": f"p{i}", "similarity": None} for i in range(5)
    ]
    assert [rows[f"rows-{i:09d}"]["image_bytes"] for i in range(5)] == images


def test_unit_input_hash_follows_the_files_a_unit_reads(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes((1, 0, 0)))
    (tmp_path / "b.png").write_bytes(png_bytes((2, 0, 0)))

    def hashes() -> list[str]:
        return [unit.input_hash for unit in plan_images(str(tmp_path), unit_size=1).units]

    first = hashes()
    assert len(set(first)) == 2 and hashes() == first  # stable while nothing changes
    (tmp_path / "a.txt").write_text("a caption arrives")  # the record of a.png changes: its prompt
    with_caption = hashes()
    assert with_caption[0] != first[0] and with_caption[1] == first[1]
    (tmp_path / "b.png").write_bytes(png_bytes((3, 0, 0), size=(7, 4)))  # rewritten in place
    rewritten = hashes()
    assert rewritten[0] == with_caption[0] and rewritten[1] != with_caption[1]


def test_listings_carry_a_version_on_s3(s3_bucket: str, s3fs_storage_options: dict) -> None:
    fs = fsspec.filesystem("s3", **s3fs_storage_options)
    fs.pipe_file(f"{s3_bucket}/v/p.txt", b"one\n")
    before = plan_prompts(f"s3://{s3_bucket}/v", unit_size=4, storage_options=s3fs_storage_options)
    fs.pipe_file(f"{s3_bucket}/v/p.txt", b"two\n")  # same size, same record count, new content
    after = plan_prompts(f"s3://{s3_bucket}/v", unit_size=4, storage_options=s3fs_storage_options)
    (source,) = {seg.source for seg in after.units[0].segments}
    assert "ETag=" in source.stamp
    assert before.units[0].input_hash != after.units[0].input_hash


def test_only_sidecars_raises(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError):
        plan_images(str(tmp_path), unit_size=2)
