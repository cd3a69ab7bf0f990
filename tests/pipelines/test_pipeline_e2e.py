"""End to end through ``run_pipeline`` on the tiny models: every pipeline input kind and mode, on local paths
and on the moto S3 server, with every output file opened and checked, exact accounting, determinism, CLIP
filtering and resume."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from stand_in_engines import SeededEngine, stage_with

from pipelines.config import PipelineConfig
from pipelines.run import RunReport, plan_job, run_pipeline
from pipelines.stages.generate import GenerateStage
from unidiffuser.tiny import write_tiny_checkpoint, write_tiny_clip

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

RESOLUTION = 64
ALL_FORMATS = ["parquet", "webdataset", "embeddings"]
FORMATS_WITHOUT_CLIP = ["parquet", "webdataset"]  # embeddings are CLIP's
# 2 CPUs: the engine, CLIP and writer actors at 0.5 each leave room for one read + preprocess task
RESOURCES = {
    "cpus_per_actor": 0.5,
    "clip_cpus_per_actor": 0.5,
    "writer_cpus": 0.5,
    "preprocess_cpus": 0.5,
    "batch_size": 4,
}
LONG_PROMPT = " ".join(f"word{i}" for i in range(120))  # far more than 77 CLIP tokens
PROMPT_LINES = [
    "a red circle",
    "",
    "a blue square on grey",
    LONG_PROMPT,
    "   ",
    "a green triangle",
    "two cats",
]
EMPTY = "input: empty prompt"


# --- fixtures and helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tiny UniDiffuser v1 checkpoint, tiny CLIP) folders, written once for the module."""
    root = tmp_path_factory.mktemp("models")
    return str(write_tiny_checkpoint(root / "unidiffuser", version=1)), str(write_tiny_clip(root / "clip"))


@dataclass
class Place:
    """A root folder, local or on the loopback S3, where a test puts its inputs and outputs."""

    root: str
    options: dict  # fsspec options for the test's own reads and writes
    storage: dict  # the job's ``storage`` section
    files: dict[str, bytes] = field(default_factory=dict)  # what the test put there, by relative path

    def uri(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def put(self, rel: str, data: bytes) -> str:
        fs, path = fsspec.core.url_to_fs(self.uri(rel), **self.options)
        if not self.root.startswith("s3://"):
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
        self.files[rel] = data
        return self.uri(rel)

    def source_images(self) -> dict[str, bytes]:
        """Every readable input image by the key the image readers give it: the path under the folder
        without extension, or the sample key inside a tar (a truncated tar yields what precedes the cut)."""
        images = {}
        for rel, data in self.files.items():
            if rel.startswith("in/images/"):
                stem, ext = os.path.splitext(rel.removeprefix("in/images/"))
                if ext in (".png", ".jpg", ".webp"):
                    images[stem] = data
            elif rel.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as tar, contextlib.suppress(tarfile.ReadError):
                    for member in tar:
                        key, _, ext = member.name.partition(".")
                        if ext in ("png", "jpg"):
                            images[key] = tar.extractfile(member).read()
        return images


def make_place(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if where == "local":
        return Place(str(tmp_path), {}, {})
    bucket = request.getfixturevalue("s3_bucket")
    return Place(
        f"s3://{bucket}",
        request.getfixturevalue("s3fs_storage_options"),
        {"endpoint_url": request.getfixturevalue("s3_endpoint")},
    )


def make_config(
    models: tuple[str, str],
    *,
    mode: str,
    input: dict,
    output: str,
    storage: dict | None = None,
    seed: int = 0,
    shard_size: int = 3,
    formats: list[str] | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    caption_image: str = "source",
    samples_per_input: int = 1,
    keep_best: int | None = None,
    clip: bool = True,
) -> PipelineConfig:
    """A job on the tiny models. ``clip=False`` runs without the CLIP scorer (one actor fewer, no clip_score and
    no embeddings output) for tests whose claims do not involve scores."""
    checkpoint, clip_model = models
    return PipelineConfig.model_validate(
        {
            "name": f"e2e-{mode}",
            "input": input,
            "model": {
                "checkpoint": checkpoint,
                "mode": mode,
                "steps": 2,
                "caption_beams": 2,
                "caption_max_tokens": 10,
                "samples_per_input": samples_per_input,
            },  # fmt: skip
            "clip": {
                "enabled": clip,
                "model": clip_model,
                "min_score": min_score,
                "max_score": max_score,
                "keep_best": keep_best,
            },
            "output": {
                "uri": output,
                "formats": formats or (ALL_FORMATS if clip else FORMATS_WITHOUT_CLIP),
                "shard_size": shard_size,
                "caption_image": caption_image,
            },
            "resources": RESOURCES,
            "seed": seed,
            "storage": storage or {},
        }
    )


def run(config: PipelineConfig, *, model: bool = True) -> RunReport:
    """Run the job; ``model=False`` with a stand-in engine (records from their seeds) for tests whose claims
    are about planning and resume, not about what the model makes."""
    generate_cls = GenerateStage if model else stage_with(SeededEngine())
    return run_pipeline(config, generate_cls=generate_cls, progress=False)


def image_bytes(size: tuple[int, int], color: Any, *, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, color)
    for x in range(0, size[0], 7):  # some structure, so images differ beyond their colour
        image.putpixel((x, x % size[1]), (255, 255, 255, 255)[: len(image.getbands())])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def tar_bytes(samples: list[dict[str, bytes | str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                payload = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def read_tree(uri: str, options: dict) -> dict[str, bytes]:
    """Every file under ``uri`` by relative path."""
    fs, root = fsspec.core.url_to_fs(uri, **options)
    fs.invalidate_cache()
    root = root.rstrip("/")
    paths = sorted(fs.find(root))
    data = fs.cat(paths) if paths else {}
    return {p[len(root) + 1 :]: data[p] for p in paths}


def decode_image(data: bytes, fmt: str = "jpg", source: bytes | None = None) -> Image.Image:
    """A written image decodes in its declared format; it is the record's input file byte for byte where the
    job keeps sources (i2t), else an image at the model resolution."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    if source is None:
        assert image.size == (RESOLUTION, RESOLUTION)
    else:
        assert data == source
    return image


@dataclass
class Output:
    summary: dict
    markers: dict[int, dict]
    written: dict[str, dict]  # key -> parquet shard row
    rejected: dict[str, dict]  # key -> rejected row
    errors: dict[str, dict]  # key -> error row
    files: dict[str, bytes]


def verify_output(
    files: dict[str, bytes],
    *,
    mode: str,
    expected_keys: set[str],
    tmp_path: Path,
    has_image: bool = True,
    has_text: bool = True,
    sources: dict[str, bytes] | None = None,
    clip: bool = True,
) -> Output:
    """Open every output file, check each format against the others, and check the exact accounting
    (``clip=False``: a job run without the CLIP scorer, so no scores and no embeddings output)."""
    assert not [f for f in files if f.endswith(".tmp") or "/." in f], "no temporary files may remain"
    summary = json.loads(files["_summary.json"])
    markers = {
        int(m.group(1)): json.loads(data)
        for name, data in files.items()
        if (m := re.fullmatch(r"_units/(\d{5})\.json", name))
    }
    assert sorted(markers) == list(range(summary["units"]))
    if not clip:
        assert not [f for f in files if f.startswith("embeddings/")], "embeddings written without CLIP"
    owned: set[str] = set()
    written: dict[str, dict] = {}
    rejected: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    all_keys: list[str] = []
    for unit, marker in markers.items():
        name = f"{unit:05d}"
        unit_files = {f for f in files if not f.startswith("_") and re.search(rf"(?<!\d){name}(?!\d)", f)}
        assert unit_files | {f"_units/{name}.keys"} == set(marker["files"]), f"unit {name}: files vs marker"
        owned |= unit_files
        rows = pq.read_table(io.BytesIO(files[f"parquet/{name}.parquet"])).to_pylist()
        by_key = {row["key"]: row for row in rows}
        assert len(by_key) == len(rows)
        for row in rows:
            assert row["mode"] == mode
            if has_image:
                image = decode_image(row["image"], row["image_format"], _source(sources, row))
                assert (row["width"], row["height"]) == image.size
            else:
                assert row["image"] is None
            if has_text:
                assert isinstance(row["text"], str)
            assert -1.0 <= row["clip_score"] <= 1.0 if clip else row["clip_score"] is None
            assert json.loads(row["params"])["steps"] == 2
            for column in ("img_emb", "text_emb"):
                if row[column] is not None:
                    assert np.isclose(np.linalg.norm(row[column]), 1.0, atol=1e-4)
        members = verify_tar(files[f"webdataset/{name}.tar"], rows, tmp_path / f"{name}.tar", sources)
        stats = json.loads(files[f"stats/{name}_stats.json"])
        assert (stats["count"], stats["successes"]) == (marker["records"], marker["written"])
        failed = stats["failed_to_download"] + stats["failed_to_resize"] + stats["failed_to_process"]
        assert (failed, stats["rejected"]) == (marker["errored"], marker["rejected"])
        if clip:
            verify_embeddings(files, name, rows, members)
        unit_rejected = _rows(files, f"rejected/{name}.parquet")
        unit_errors = _rows(files, f"errors/{name}.parquet")
        for row in unit_rejected:
            assert row["reason"] and (row["clip_score"] is not None or not clip)
            if has_image:
                decode_image(row["image"], row["image_format"], _source(sources, row))
        for row in unit_errors:
            assert row["reason"]
        assert (marker["written"], marker["rejected"], marker["errored"]) == (
            len(rows),
            len(unit_rejected),
            len(unit_errors),
        )
        assert marker["records"] == len(rows) + len(unit_rejected) + len(unit_errors)
        for target, unit_rows in ((written, rows), (rejected, unit_rejected), (errors, unit_errors)):
            for row in unit_rows:
                all_keys.append(row["key"])
                target[row["key"]] = row
    job_files = {
        "README.md",
        "wids_index.json",
    }  # the dataset card and the wids index: the job's, not a unit's
    assert "README.md" in files and ("wids_index.json" in files) == any(
        f.startswith("webdataset/") for f in files
    )
    stray = {f for f in files if not f.startswith("_")} - owned - job_files
    assert not stray, f"files that belong to no committed unit: {stray}"
    duplicates = {k: n for k, n in Counter(all_keys).items() if n > 1}
    assert not duplicates, f"keys written more than once: {duplicates}"
    assert set(all_keys) == expected_keys
    assert summary["records"] == len(expected_keys) == summary["inputs"] * summary["samples_per_input"]
    assert summary["records"] == summary["written"] + summary["rejected"] + summary["errored"]
    assert (summary["written"], summary["rejected"], summary["errored"]) == (
        len(written),
        len(rejected),
        len(errors),
    )
    # the summary counts rejections by rule (a bound without its value), one per failed rule
    rules = Counter(rule for row in rejected.values() for rule in row.get("rejected_by") or [row["reason"]])
    assert summary["rejected_reasons"] == dict(rules)
    assert summary["error_reasons"] == dict(Counter(r["reason"] for r in errors.values()))
    return Output(summary, markers, written, rejected, errors, files)


def _comparable(name: str, data: bytes) -> bytes | dict:
    """A file as two runs must agree on it: the bytes, but a unit's stats without their clock times."""
    if not name.startswith("stats/"):
        return data
    stats = json.loads(data)
    assert stats.pop("start_time") <= stats.pop("end_time")
    return stats


def _rows(files: dict[str, bytes], name: str) -> list[dict]:
    return pq.read_table(io.BytesIO(files[name])).to_pylist() if name in files else []


def _source(sources: dict[str, bytes] | None, row: dict) -> bytes | None:
    return None if sources is None else sources[row["input_key"]]


def verify_tar(
    data: bytes, rows: list[dict], local: Path, sources: dict[str, bytes] | None = None
) -> list[str]:
    """The tar holds exactly the parquet rows, in order, with the same bytes; webdataset reads it."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            base, _, ext = member.name.rpartition("/")[2].partition(".")
            prefix = member.name.rpartition("/")[0]
            samples.setdefault(f"{prefix}/{base}" if prefix else base, {})[ext] = tar.extractfile(
                member
            ).read()
    assert len(samples) == len(rows)
    for (member, sample), row in zip(samples.items(), rows, strict=True):
        meta = json.loads(sample["json"])
        assert meta["key"] == row["key"] and meta["status"] == "success"
        score = None if row["clip_score"] is None else pytest.approx(row["clip_score"])
        assert meta["seed"] == row["seed"] and meta.get("clip_score") == score
        if row["image"] is not None:
            assert sample[row["image_format"]] == row["image"]
            decode_image(sample[row["image_format"]], row["image_format"], _source(sources, row))
        if row["text"] is not None:
            assert sample["txt"].decode() == row["text"]
        assert set(sample) == {"json"} | ({row["image_format"]} if row["image"] else set()) | (
            {"txt"} if row["text"] is not None else set()
        ), member
    local.write_bytes(data)
    read = list(wds.WebDataset(str(local), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in read] == list(samples)
    assert [json.loads(s["json"])["key"] for s in read] == [row["key"] for row in rows]
    return list(samples)


def verify_embeddings(files: dict[str, bytes], name: str, rows: list[dict], members: list[str]) -> None:
    """clip-retrieval npy rows align with the metadata rows and with the shard's embedding columns."""
    meta_name = f"embeddings/metadata/metadata_{name}.parquet"
    if not rows:
        assert meta_name not in files
        return
    meta = pq.read_table(io.BytesIO(files[meta_name])).to_pylist()
    assert [m["key"] for m in meta] == [row["key"] for row in rows]
    assert [m["caption"] for m in meta] == [row["text"] for row in rows]
    for m, row, member in zip(meta, rows, members, strict=True):
        expected = f"webdataset/{name}.tar/{member}.{row['image_format']}" if row["image"] else row["key"]
        assert m["image_path"] == expected
    for column, folder in (("img_emb", "img_emb"), ("text_emb", "text_emb")):
        path = f"embeddings/{folder}/{folder}_{name}.npy"
        present = [row[column] is not None for row in rows]
        if not any(present):
            assert path not in files
            continue
        matrix = np.load(io.BytesIO(files[path]), allow_pickle=False)
        assert matrix.dtype == np.float32 and matrix.shape[0] == len(rows)
        # rows without this embedding (an image with no text) hold zeros, keeping npy and metadata aligned
        dim = matrix.shape[1]
        expected = [row[column] if row[column] is not None else [0.0] * dim for row in rows]
        np.testing.assert_allclose(matrix, np.array(expected, np.float32), atol=1e-6)
        norms = np.linalg.norm(matrix, axis=1)
        np.testing.assert_allclose(norms[present], 1.0, atol=1e-4)
        assert not norms[~np.array(present)].any()


def assert_errors(out: Output, expected: dict[str, str]) -> None:
    """Exactly the ``expected`` keys errored, each reason containing the expected text."""
    assert set(out.errors) == set(expected), {k: r["reason"] for k, r in out.errors.items()}
    for key, text in expected.items():
        assert text in out.errors[key]["reason"], (key, out.errors[key]["reason"])


def images_by_key(out: Output) -> dict[str, bytes]:
    return {k: row["image"] for k, row in out.written.items()}


# --- inputs --------------------------------------------------------------------------------------------------


def prompt_keys(stem: str, n: int) -> set[str]:
    return {f"{stem}-{i:09d}" for i in range(n)}


def put_txt(place: Place) -> tuple[dict, set[str], dict[str, str]]:
    uri = place.put("in/prompts.txt", ("\n".join(PROMPT_LINES) + "\n").encode())
    errors = {f"prompts-{i:09d}": EMPTY for i, p in enumerate(PROMPT_LINES) if not p.strip()}
    return {"kind": "prompts", "uri": uri}, prompt_keys("prompts", len(PROMPT_LINES)), errors


def put_jsonl(place: Place) -> tuple[dict, set[str], dict[str, str]]:
    lines = [json.dumps({"prompt": "a yellow star"}), json.dumps({"text": "a purple moon"}), "",
             json.dumps({"prompt": LONG_PROMPT, "id": 3}), "{not json", json.dumps({"prompt": ""}),
             json.dumps({"prompt": 7}), json.dumps({"prompt": "an orange cube"})]  # fmt: skip
    uri = place.put("in/prompts.jsonl", ("\n".join(lines) + "\n").encode())
    errors = {
        "prompts-000000002": "empty line",
        "prompts-000000004": "invalid JSON",
        "prompts-000000005": EMPTY,
        "prompts-000000006": "not a string",
    }
    return {"kind": "prompts", "uri": uri}, prompt_keys("prompts", len(lines)), errors


def put_image_folder(place: Place) -> tuple[dict, set[str], dict[str, str]]:
    place.put("in/images/cat.png", image_bytes((80, 60), (200, 30, 30)))
    place.put("in/images/dog.jpg", image_bytes((40, 40), (20, 160, 40), fmt="JPEG"))  # upscaled
    place.put("in/images/sub/bird.webp", image_bytes((64, 96), (10, 20, 200, 128), fmt="WEBP", mode="RGBA"))
    place.put("in/images/gray.png", image_bytes((70, 70), 90, mode="L"))
    place.put("in/images/broken.jpg", image_bytes((50, 50), (1, 2, 3), fmt="JPEG")[:60])  # corrupt
    place.put("in/images/notes.md", b"# not an image\n")
    place.put("in/images/cat.txt", b"a sidecar caption\n")  # img2dataset "files" layout: the cat's caption
    errors = {"broken": "undecodable image", "notes": "not an image file"}
    keys = {"cat", "dog", "sub/bird", "gray", "broken", "notes"}
    return {"kind": "images", "uri": place.uri("in/images")}, keys, errors


def put_tars(place: Place) -> tuple[dict, set[str], dict[str, str]]:
    good = [
        {
            "__key__": f"s{i}",
            "jpg": image_bytes((72, 64), (i * 60, 90, 30), fmt="JPEG"),
            "txt": f"shape {i}",
            "json": json.dumps({"i": i}),
        }  # fmt: skip
        for i in range(3)
    ]
    place.put("in/tars/part-0.tar", tar_bytes(good))
    cut = [{"__key__": f"t{i}", "png": image_bytes((64, 64), (30, i * 70, 200))} for i in range(3)]
    data = tar_bytes(cut)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut_at = next(m for m in tar.getmembers() if m.name == "t2.png").offset_data + 20
    place.put("in/tars/part-1.tar", data[:cut_at])  # truncated inside the last sample
    keys = {"s0", "s1", "s2", "t0", "t1", "part-1-error"}
    return {"kind": "images", "uri": place.uri("in/tars")}, keys, {"part-1-error": "truncated or corrupt tar"}


def count_input(place: Place) -> tuple[dict, set[str], dict[str, str]]:
    return {"kind": "count", "count": 5}, {f"{i:09d}" for i in range(5)}, {}


CASES: dict[str, tuple[str, Callable[[Place], tuple[dict, set[str], dict[str, str]]], bool]] = {
    # name: (mode, input builder, whether written rows have an input-independent text)
    "t2i-txt": ("t2i", put_txt, True),
    "t2i-jsonl": ("t2i", put_jsonl, True),
    "joint-count": ("joint", count_input, True),
    "i2t-folder": ("i2t", put_image_folder, True),
    "i2t-tars": ("i2t", put_tars, True),
    "i2t2i-folder": ("i2t2i", put_image_folder, False),  # only the cat has a caption (a sidecar) to pair
    "i2t2i-tars": ("i2t2i", put_tars, False),  # the tar captions (where there are some) are the paired text
}
# Each case runs once, on local paths or on the loopback S3 (both kinds of each input format are covered:
# txt on both through the base run, tars and image folders on S3 for one mode and locally for the other); the
# storage layer itself is tested on both in the reader and writer tests. t2i-txt on local paths is the
# module's base run (test_t2i_txt_local_base_run).
WHERE = {"t2i-txt": "s3", "t2i-jsonl": "local", "joint-count": "s3", "i2t-folder": "s3", "i2t-tars": "local",
         "i2t2i-folder": "local", "i2t2i-tars": "s3"}  # fmt: skip
PARAMS = [(c, WHERE[c]) for c in CASES]
# Two cases also carry options that need a run of their own otherwise: input fields kept into every output, and
# i2t captions written with the model's prepared input instead of the input file (the folder case keeps the
# default, its input file, checked byte for byte).
KEEP_FIELDS = {"t2i-jsonl": ["id"], "i2t-tars": ["i"]}
CAPTION_IMAGE = {"i2t-tars": "model_input"}


# --- every mode and input kind, local and S3 -----------------------------------------------------------------


@pytest.mark.parametrize(("case", "where"), PARAMS, ids=[f"{c}-{w}" for c, w in PARAMS])
def test_mode_end_to_end(
    case: str, where: str, models: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    mode, build, has_text = CASES[case]
    place = make_place(where, request, tmp_path)
    input_spec, keys, expected_errors = build(place)
    if case in KEEP_FIELDS:
        input_spec |= {"keep_fields": KEEP_FIELDS[case]}
    caption_image = CAPTION_IMAGE.get(case, "source")
    out_uri = place.uri("out")
    config = make_config(
        models,
        mode=mode,
        input=input_spec,
        output=out_uri,
        storage=place.storage,
        caption_image=caption_image,
    )
    report = run(config)
    assert report.did_model_work and report.units_skipped == 0
    assert report.units_total == -(-len(keys) // 3)
    out = verify_output(
        read_tree(out_uri, place.options),
        mode=mode,
        expected_keys=keys,
        tmp_path=tmp_path,
        has_text=has_text,
        # captions go out with their input file, or with the model's input at the model resolution
        sources=place.source_images() if mode == "i2t" and caption_image == "source" else None,
        has_image=caption_image != "none",
    )
    assert_errors(out, expected_errors)
    assert not out.rejected  # no CLIP bounds
    assert out.summary["units_run"] == report.units_total and out.summary["name"] == f"e2e-{mode}"
    rows = out.written.values()
    if mode == "t2i":
        assert all(row["text"] == row["prompt"] and row["generated_caption"] is None for row in rows)
        long_rows = [row for row in rows if row["prompt"] == LONG_PROMPT]
        assert len(long_rows) == 1  # a prompt over 77 tokens is truncated for the model, kept whole
        (long_row,) = long_rows  # and the outputs say so, with the part the model saw
        assert long_row["flags"] == ["prompt_truncated"]
        assert LONG_PROMPT.startswith(long_row["prompt_used"]) and len(long_row["prompt_used"]) < len(
            LONG_PROMPT
        )
        assert all(row["flags"] == [] and row["prompt_used"] is None for row in rows if row is not long_row)
    elif mode in ("i2t", "joint"):
        assert all(row["text"] == row["generated_caption"] and isinstance(row["text"], str) for row in rows)
    else:  # i2t2i: the caption is never decoded; the paired text is the input's own caption, if any
        assert all(row["generated_caption"] is None and row["text"] == row["source_caption"] for row in rows)
    if caption_image == "model_input":  # the image the model captioned, at its resolution
        assert all((row["width"], row["height"]) == (RESOLUTION, RESOLUTION) for row in rows)
    if mode in ("i2t", "i2t2i"):  # an input image's caption is its source caption, never a prompt
        assert all(row["prompt"] is None for row in rows)
    if case.endswith("tars"):
        assert {k: row["source_caption"] for k, row in out.written.items() if k.startswith("s")} == {
            f"s{i}": f"shape {i}" for i in range(3)
        }
        assert out.written["t0"]["source_caption"] is None
    if case.endswith("folder"):
        assert {k: row["source_caption"] for k, row in out.written.items()} == {
            "cat": "a sidecar caption", "dog": None, "sub/bird": None, "gray": None,
        }  # fmt: skip
    if where == "s3":
        assert all(row["source"].startswith("s3://") for row in rows) or mode == "joint"
        assert not list(Path(tmp_path).glob("out*")), "S3 jobs must not write locally"
    # the rows' seeds are the per-record seeds derived from the job seed and key
    assert len({row["seed"] for row in rows}) == len(out.written)
    if case == "t2i-jsonl":  # the kept field, in every output: null where a record has none
        ids = {key: json.loads(row["metadata"])["id"] for key, row in (out.written | out.errors).items()}
        assert ids == {key: 3 if key == "prompts-000000003" else None for key in keys}
        assert tar_metadata(out, "webdataset/00001.tar") == {"prompts-000000003": {"id": 3}}
    if case == "i2t-tars":  # the kept field of each image sample (the tar's .json), in every output
        kept = {key: json.loads(row["metadata"]) for key, row in (out.written | out.errors).items()}
        assert kept == {key: {"i": int(key[1])} if key.startswith("s") else {"i": None} for key in keys}
        assert tar_metadata(out, "webdataset/00000.tar") == {f"s{i}": {"i": i} for i in range(3)}


def tar_metadata(out: Output, shard: str) -> dict[str, Any]:
    """Each sample's ``metadata`` in a written tar shard's ``.json`` members, by key."""
    with tarfile.open(fileobj=io.BytesIO(out.files[shard])) as tar:
        meta = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return {m["key"]: m["metadata"] for m in meta}


# --- the base t2i run: determinism, CLIP bounds and resume ------------------------------------------------------


@dataclass
class BaseRun:
    place: Place
    input: dict
    keys: set[str]
    errors: dict[str, str]
    out_uri: str
    out: Output


@pytest.fixture(scope="module")
def base_run(models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> BaseRun:
    """t2i from a local .txt of prompts (with empty lines and a long prompt), 3 units, all formats."""
    tmp = tmp_path_factory.mktemp("base")
    place = Place(str(tmp), {}, {})
    input_spec, keys, errors = put_txt(place)
    out_uri = str(tmp / "out")
    report = run(make_config(models, mode="t2i", input=input_spec, output=out_uri))
    assert report.did_model_work and report.units_total == 3
    out = verify_output(read_tree(out_uri, {}), mode="t2i", expected_keys=keys, tmp_path=tmp)
    return BaseRun(place, input_spec, keys, errors, out_uri, out)


def test_t2i_txt_local_base_run(base_run: BaseRun) -> None:
    out = base_run.out
    assert_errors(out, base_run.errors)
    assert out.summary["error_reasons"] == {EMPTY: 2}
    assert (out.summary["inputs"], out.summary["written"], out.summary["errored"]) == (7, 5, 2)
    assert {row["prompt"] for row in out.written.values()} == {p for p in PROMPT_LINES if p.strip()}
    assert {m["written"] for m in out.markers.values()} <= {1, 2, 3}
    assert out.summary["units_skipped"] == 0 and out.summary["units_run"] == 3


def test_same_job_twice_is_byte_identical_and_another_seed_differs(
    base_run: BaseRun, models: tuple[str, str], tmp_path: Path
) -> None:
    again = str(tmp_path / "again")
    run(make_config(models, mode="t2i", input=base_run.input, output=again))
    out_again = verify_output(
        read_tree(again, {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path
    )
    first = images_by_key(base_run.out)
    assert images_by_key(out_again) == first
    assert {k: r["seed"] for k, r in out_again.written.items()} == {
        k: r["seed"] for k, r in base_run.out.written.items()
    }
    # all but the tar (member mtimes), the summary and the wids index (named after the output's folder)
    for name, data in base_run.out.files.items():
        if not name.endswith((".tar", "_summary.json", "wids_index.json")):
            assert _comparable(name, out_again.files[name]) == _comparable(name, data), name

    other = str(tmp_path / "other-seed")
    # another seed, the images compared only: no CLIP scorer (scores do not enter the images)
    run(make_config(models, mode="t2i", input=base_run.input, output=other, seed=1, clip=False))
    out_other = verify_output(
        read_tree(other, {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path, clip=False
    )
    other_images = images_by_key(out_other)
    assert set(other_images) == set(first)
    assert all(other_images[k] != first[k] for k in first), "a different job seed must change every image"
    assert all(out_other.written[k]["seed"] != base_run.out.written[k]["seed"] for k in first)


def test_clip_bounds_reject_records_with_score_and_reason(
    base_run: BaseRun, models: tuple[str, str], tmp_path: Path
) -> None:
    scores = {k: row["clip_score"] for k, row in base_run.out.written.items()}
    ordered = sorted(scores.values())
    assert len(set(ordered)) == len(ordered) >= 4, ordered
    low = (ordered[0] + ordered[1]) / 2
    high = (ordered[-2] + ordered[-1]) / 2
    out_uri = str(tmp_path / "filtered")
    run(make_config(models, mode="t2i", input=base_run.input, output=out_uri, min_score=low, max_score=high))
    out = verify_output(read_tree(out_uri, {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path)
    below = {k for k, s in scores.items() if s < low}
    above = {k for k, s in scores.items() if s > high}
    assert len(below) == len(above) == 1
    assert set(out.rejected) == below | above
    for key, row in out.rejected.items():
        assert row["clip_score"] == pytest.approx(scores[key], abs=1e-6)
        rule = f"< min {low!r}" if key in below else f"> max {high!r}"
        assert row["reason"].startswith("clip_score ") and row["reason"].endswith(rule), row["reason"]
        assert row["rejected_by"] == [f"clip_score {rule}"]
        assert (
            row["image"] == base_run.out.written[key]["image"]
        )  # the rejected image is kept for review (marked)
    assert not (set(out.written) & set(out.rejected))
    assert set(out.written) == set(scores) - below - above
    assert all(low <= row["clip_score"] <= high for row in out.written.values())
    assert out.summary["rejected_reasons"] == {
        f"clip_score < min {low!r}": 1,
        f"clip_score > max {high!r}": 1,
    }
    assert out.summary["rejected"] == 2 and out.summary["written"] == len(scores) - 2
    assert_errors(out, base_run.errors)
    assert {k: r["image"] for k, r in out.written.items()} == {
        k: base_run.out.written[k]["image"] for k in out.written
    }


def _stat_tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def _tar_contents(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_resume_skips_committed_units_and_redoes_a_lost_one(
    base_run: BaseRun, models: tuple[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "out"
    shutil.copytree(base_run.out_uri, root)  # copy2: mtimes kept
    config = make_config(models, mode="t2i", input=base_run.input, output=str(root))
    before = _stat_tree(root)

    report = run(config)
    assert not report.did_model_work
    assert (report.units_total, report.units_skipped, report.units_run) == (3, 3, 0)
    after = _stat_tree(root)
    assert set(after) == set(before)
    changed = {name for name in before if after[name] != before[name]}
    assert changed <= {"_summary.json"}, f"a resume with nothing to do changed {changed}"
    summary = json.loads((root / "_summary.json").read_text())
    for name in ("inputs", "written", "rejected", "errored", "error_reasons", "rejected_reasons"):
        assert summary[name] == base_run.out.summary[name]
    assert (summary["units_skipped"], summary["units_run"]) == (3, 0)

    (root / "_units" / "00001.json").unlink()
    report = run(config)
    assert report.did_model_work
    assert (report.units_total, report.units_skipped, report.units_run) == (3, 2, 1)
    redone = _stat_tree(root)
    assert set(redone) == set(before)
    touched = {name for name in before if redone[name][0] != before[name][0]}
    unit1 = set(base_run.out.markers[1]["files"]) | {"_units/00001.json"}
    assert touched == unit1 | {"_summary.json"}, "only unit 00001's files may be rewritten"
    out = verify_output(read_tree(str(root), {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path)
    for name, data in base_run.out.files.items():
        if name.endswith(".tar"):
            assert _tar_contents(out.files[name]) == _tar_contents(data), name
        elif name != "_summary.json":
            assert _comparable(name, out.files[name]) == _comparable(name, data), name
    for name in ("inputs", "written", "rejected", "errored", "error_reasons", "rejected_reasons", "units"):
        assert out.summary[name] == base_run.out.summary[name]


def test_output_of_another_plan_is_redone_not_trusted(
    base_run: BaseRun, models: tuple[str, str], tmp_path: Path
) -> None:
    """Re-running into an output that another job wrote: units whose markers hold another configuration's
    fingerprint or another record count are redone, units outside the plan are removed, and every input
    ends accounted for exactly once."""
    root = tmp_path / "out"
    shutil.copytree(base_run.out_uri, root)
    assert [m["records"] for m in base_run.out.markers.values()][:2] == [3, 3]
    # another plan (a shard size of 2) and another configuration (no CLIP scorer, so no embeddings output)
    config = make_config(models, mode="t2i", input=base_run.input, output=str(root), shard_size=2, clip=False)
    report = run(config, model=False)  # no old unit is trusted
    assert (report.units_skipped, report.units_run) == (0, report.units_total)
    out = verify_output(
        read_tree(str(root), {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path, clip=False
    )
    assert out.summary["inputs"] == len(base_run.keys)
    # same units, another configuration (seed): nothing is trusted; the same again: everything is
    reseeded = make_config(
        models, mode="t2i", input=base_run.input, output=str(root), shard_size=2, seed=5, clip=False
    )
    assert run(reseeded, model=False).units_skipped == 0
    again = run(reseeded, model=False)
    assert not again.did_model_work and again.units_skipped == again.units_total
    # back to the first plan, which has fewer units: the extra units of the shard-size-2 runs are removed
    first_plan = make_config(models, mode="t2i", input=base_run.input, output=str(root))
    back = run(first_plan, model=False)
    assert back.units_total < report.units_total and back.units_run == back.units_total
    out = verify_output(read_tree(str(root), {}), mode="t2i", expected_keys=base_run.keys, tmp_path=tmp_path)
    assert set(out.files) == set(base_run.out.files), "files of units outside the plan were left behind"
    removed = report.units_total - back.units_total
    assert (out.summary["units_removed"], out.summary["units_redone"]) == (removed, back.units_total)
    assert out.summary["units"] == back.units_total
    for name in ("inputs", "written", "rejected", "errored", "error_reasons", "rejected_reasons"):
        assert out.summary[name] == base_run.out.summary[name]


def test_a_changed_input_redoes_the_units_whose_records_changed(
    models: tuple[str, str], tmp_path: Path
) -> None:
    """A scheduled job re-run over a grown input (a new file sorting between old ones) or over a file
    rewritten in place: the units whose records changed are redone, even where their record counts did not,
    and the output ends holding exactly the new input, each record once."""
    folder = tmp_path / "in"
    folder.mkdir()

    def put(name: str, tag: str) -> None:
        (folder / f"{name}.txt").write_text(
            "".join(f"{tag} shape {i} on a grey background\n" for i in range(3))
        )

    def prompts_written(out: Output) -> dict[str, str]:
        return {key: row["prompt"] for key, row in (out.written | out.rejected).items()}

    put("a", "a red")
    put("c", "a cyan")
    out_uri = str(tmp_path / "out")
    config = make_config(
        models, mode="t2i", input={"kind": "prompts", "uri": str(folder)}, output=out_uri, clip=False
    )
    assert run(config, model=False).units_total == 2
    put("b", "a blue")  # sorts between a and c: unit 1 now holds b's records, unit 2 c's
    report = run(config, model=False)
    assert (report.units_total, report.units_skipped, report.units_run) == (3, 1, 2)
    keys = prompt_keys("a", 3) | prompt_keys("b", 3) | prompt_keys("c", 3)
    out = verify_output(read_tree(out_uri, {}), mode="t2i", expected_keys=keys, tmp_path=tmp_path, clip=False)
    assert (out.summary["units_redone"], out.summary["units_removed"]) == (1, 0)  # unit 1 (c -> b); 2 is new
    assert prompts_written(out)["b-000000001"] == "a blue shape 1 on a grey background"
    put("c", "a green")  # rewritten in place, as many lines: only its unit is redone
    report = run(config, model=False)
    assert (report.units_skipped, report.units_run) == (2, 1)
    out = verify_output(read_tree(out_uri, {}), mode="t2i", expected_keys=keys, tmp_path=tmp_path, clip=False)
    assert [prompts_written(out)[f"c-{i:09d}"] for i in range(3)] == [
        f"a green shape {i} on a grey background" for i in range(3)
    ]
    assert not run(config, model=False).did_model_work


def test_a_replaced_checkpoint_or_clip_model_redoes_every_unit(
    models: tuple[str, str], tmp_path: Path
) -> None:
    """Units made by another version of the checkpoint (or of the CLIP scorer) at the same location are
    redone on resume, as units of another configuration are; an untouched job does no model work."""
    checkpoint, clip = (tmp_path / "checkpoint", tmp_path / "clip")
    shutil.copytree(models[0], checkpoint)
    shutil.copytree(models[1], clip)
    out_uri = str(tmp_path / "out")
    config = make_config((str(checkpoint), str(clip)), mode="joint", input={"kind": "count", "count": 4},
                         output=out_uri, shard_size=2)  # fmt: skip
    assert run(config, model=False).units_run == 2
    assert not run(config, model=False).did_model_work

    def rewritten(path: Path) -> None:  # same bytes, new mtime: what a new upload of the file looks like
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    rewritten(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    report = run(config, model=False)
    assert (report.units_skipped, report.units_run) == (0, 2)
    assert not run(config, model=False).did_model_work
    # a new CLIP model: the plan alone shows it, every unit is stale (the redo itself is shown above)
    rewritten(clip / "config.json")
    _, plan = plan_job(config)
    assert (len(plan.keep), plan.to_run, len(plan.stale)) == (0, 2, 2)
    verify_output(read_tree(out_uri, {}), mode="joint", expected_keys={f"{i:09d}" for i in range(4)},
                  tmp_path=tmp_path)  # fmt: skip


def test_best_of_n_keeps_the_best_scoring_sample_of_each_prompt(
    base_run: BaseRun, models: tuple[str, str], tmp_path: Path
) -> None:
    """Three samples per prompt, each its own record with its own key and seed; keep_best=1 keeps the
    highest-scoring one and rejects the others with their score; a bad prompt errors all its samples."""
    out_uri = str(tmp_path / "best")
    config = make_config(
        models, mode="t2i", input=base_run.input, output=out_uri, samples_per_input=3, keep_best=1
    )
    report = run(config)
    keys = {f"{k}_{i}" for k in base_run.keys for i in range(3)}
    out = verify_output(read_tree(out_uri, {}), mode="t2i", expected_keys=keys, tmp_path=tmp_path)
    assert (out.summary["inputs"], out.summary["samples_per_input"], out.summary["records"]) == (7, 3, 21)
    assert report.units_total == base_run.out.summary["units"]  # shard_size counts inputs
    assert_errors(out, {f"{k}_{i}": reason for k, reason in base_run.errors.items() for i in range(3)})
    good = base_run.keys - set(base_run.errors)
    assert {row["input_key"] for row in out.written.values()} == good
    assert len(out.written) == len(good) and len(out.rejected) == 2 * len(good)
    assert set(out.summary["rejected_reasons"]) == {"clip_score not among the best 1 samples of its input"}
    for input_key in good:
        drawn = {row["sample"]: row for row in [*out.written.values(), *out.rejected.values()]
                 if row["input_key"] == input_key}  # fmt: skip
        assert sorted(drawn) == [0, 1, 2]
        assert all(row["key"] == f"{input_key}_{s}" for s, row in drawn.items())
        assert len({row["seed"] for row in drawn.values()}) == 3
        assert len({row["image"] for row in drawn.values()}) == 3, "each sample is its own draw"
        kept = out.written[next(k for k in out.written if out.written[k]["input_key"] == input_key)]
        assert kept["clip_score"] == max(row["clip_score"] for row in drawn.values())
        assert kept["prompt"] == base_run.out.written[input_key]["prompt"]
    # a resume of the finished job does nothing: markers count samples, the plan counts inputs
    assert not run(config).did_model_work


def test_i2t2i_unit_mixing_captioned_and_uncaptioned_samples(models: tuple[str, str], tmp_path: Path) -> None:
    samples = [
        {"__key__": f"m{i}", "png": image_bytes((64, 64), (i * 50, 90, 30))}
        | ({"txt": f"cap {i}"} if i % 2 else {})
        for i in range(4)
    ]
    place = Place(str(tmp_path), {}, {})
    place.put("in/mixed.tar", tar_bytes(samples))
    out_uri = str(tmp_path / "out")
    config = make_config(
        models,
        mode="i2t2i",
        input={"kind": "images", "uri": place.uri("in")},
        output=out_uri,
        shard_size=4,
        clip=False,
    )
    run(config)
    out = verify_output(
        read_tree(out_uri, {}),
        mode="i2t2i",
        expected_keys={f"m{i}" for i in range(4)},
        tmp_path=tmp_path,
        has_text=False,
        clip=False,
    )
    assert {k: r["text"] for k, r in out.written.items()} == {
        "m0": None,
        "m1": "cap 1",
        "m2": None,
        "m3": "cap 3",
    }


def test_i2t_captions_without_an_image(models: tuple[str, str], tmp_path: Path) -> None:
    """Captions written with no image (the input file itself and the model's prepared input are checked in
    test_mode_end_to_end)."""
    place = Place(str(tmp_path), {}, {})
    input_spec, keys, expected_errors = put_image_folder(place)
    out_uri = str(tmp_path / "out")
    run(make_config(models, mode="i2t", input=input_spec, output=out_uri, caption_image="none"))
    out = verify_output(
        read_tree(out_uri, {}), mode="i2t", expected_keys=keys, tmp_path=tmp_path, has_image=False
    )
    assert_errors(out, expected_errors)
    assert all(
        isinstance(row["generated_caption"], str) and row["img_emb"] is not None
        for row in out.written.values()
    )
