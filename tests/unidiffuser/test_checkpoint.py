"""Finding and caching checkpoints: local folders, file:// and s3:// (a real S3 API: moto on loopback).

A remote checkpoint is copied once per node and version into the cache, under a file lock, through a
temporary folder renamed into place; a complete copy carries a marker, anything without it is not trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import fsspec
import numpy as np
import pytest
import s3fs

from unidiffuser import CheckpointError, UniDiffuserEngine, resolve_checkpoint
from unidiffuser import checkpoint as checkpoint_module
from unidiffuser.checkpoint import CheckpointChangedError

MARKER = ".unidiffuser-complete"
PROMPTS = ["a red circle on a grey background", "a small boat"]
SEEDS = [5, 6]


def _tree(root: Path, *, skip: tuple[str, ...] = (MARKER,)) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _outputs(engine: UniDiffuserEngine) -> list[bytes]:
    return [r.image.tobytes() for r in engine.t2i(PROMPTS, seeds=SEEDS)]


def _load(uri, **kwargs) -> UniDiffuserEngine:
    return UniDiffuserEngine.from_pretrained(uri, steps=2, **kwargs)


def _checkpoint_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def _assert_clean_cache(cache: Path, expected_copies: int) -> Path | None:
    """Only complete copies (and lock files) in the cache: no temporary folders left behind."""
    entries = sorted(cache.iterdir())
    leftovers = [p.name for p in entries if ".tmp" in p.name]
    assert not leftovers, leftovers
    assert all(p.is_dir() or p.suffix == ".lock" for p in entries), [p.name for p in entries]
    dirs = _checkpoint_dirs(cache)
    assert len(dirs) == expected_copies, [p.name for p in dirs]
    for folder in dirs:
        assert (folder / MARKER).is_file()
    return dirs[0] if dirs else None


@pytest.fixture(scope="module")
def local_outputs(tiny_checkpoint: Path) -> list[bytes]:
    """What the local checkpoint gives: every copy of it must give exactly this."""
    return _outputs(_load(tiny_checkpoint))


@pytest.fixture()
def remote_checkpoint(tiny_checkpoint: Path, s3_bucket: str, s3fs_storage_options: dict) -> str:
    """The tiny checkpoint uploaded to s3://<fresh bucket>/models/tiny-v1; returns the URI."""
    fs = s3fs.S3FileSystem(**s3fs_storage_options, skip_instance_cache=True)
    fs.put(str(tiny_checkpoint) + "/", f"{s3_bucket}/models/tiny-v1", recursive=True)
    uploaded = {p.split("/models/tiny-v1/", 1)[1] for p in fs.find(f"{s3_bucket}/models/tiny-v1")}
    assert uploaded == set(_tree(tiny_checkpoint))
    return f"s3://{s3_bucket}/models/tiny-v1"


def _delete_bucket_objects(bucket: str, endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# ------------------------------------------------------------------------------------------------------------
# local
# ------------------------------------------------------------------------------------------------------------
def test_local_path_is_used_in_place(tiny_checkpoint: Path, tmp_path: Path, local_outputs):
    assert resolve_checkpoint(tiny_checkpoint, cache_dir=tmp_path) == tiny_checkpoint
    assert resolve_checkpoint(str(tiny_checkpoint), cache_dir=tmp_path) == tiny_checkpoint
    assert list(tmp_path.iterdir()) == []  # nothing copied
    engine = _load(tiny_checkpoint)
    assert engine.components.path == tiny_checkpoint
    assert engine.resolution == 64
    assert _outputs(engine) == local_outputs


def test_file_uri(tiny_checkpoint: Path, tmp_path: Path, local_outputs):
    uri = "file://" + str(tiny_checkpoint)
    assert resolve_checkpoint(uri, cache_dir=tmp_path) == tiny_checkpoint
    assert list(tmp_path.iterdir()) == []
    assert _outputs(_load(uri)) == local_outputs


def test_missing_local_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found") as info:
        resolve_checkpoint(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)
    with pytest.raises(CheckpointError):
        resolve_checkpoint("file://" + str(tmp_path / "absent"))
    a_file = tmp_path / "weights.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(CheckpointError):
        resolve_checkpoint(a_file)


# ------------------------------------------------------------------------------------------------------------
# s3 through s3fs
# ------------------------------------------------------------------------------------------------------------
def test_s3_checkpoint_is_downloaded_once_and_cached(
    remote_checkpoint: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    s3fs_storage_options: dict,
    s3_bucket: str,
    s3_endpoint: str,
    local_outputs,
    monkeypatch: pytest.MonkeyPatch,
):
    cache = tmp_path / "cache"
    engine = _load(remote_checkpoint, cache_dir=cache, storage_options=s3fs_storage_options)
    path = engine.components.path
    assert path.parent == cache
    assert _tree(path) == _tree(tiny_checkpoint)  # one complete copy, byte for byte
    assert json.loads((path / MARKER).read_text())["uri"] == remote_checkpoint
    assert _assert_clean_cache(cache, 1) == path
    assert _outputs(engine) == local_outputs

    # second load: served from the cache; the bucket is gone and storage unreachable, so the newest copy
    # of the URI serves (with a warning)
    _delete_bucket_objects(s3_bucket, s3_endpoint)

    def no_remote(*args, **kwargs):
        raise AssertionError("the cache was not used: remote storage contacted")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_remote)
    monkeypatch.setattr(checkpoint_module, "_download", no_remote)
    again = _load(remote_checkpoint, cache_dir=cache, storage_options=s3fs_storage_options)
    assert again.components.path == path
    assert _outputs(again) == local_outputs
    # the same location written with a trailing slash is the same cache entry
    assert resolve_checkpoint(remote_checkpoint + "/", cache_dir=cache) == path
    _assert_clean_cache(cache, 1)


def test_a_checkpoint_replaced_at_its_uri_is_copied_again(
    remote_checkpoint: str,
    tiny_checkpoint: Path,
    tiny_checkpoint_v0: Path,
    s3_bucket: str,
    s3_endpoint: str,
    s3fs_storage_options: dict,
    tmp_path: Path,
):
    """The cache is keyed by the checkpoint's listing (sizes, ETags): a new version at the same URI is
    downloaded, never served stale from the old copy; an unchanged one is not downloaded again."""
    first = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    assert (
        resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
        == first
    )
    identity = checkpoint_module.checkpoint_identity(remote_checkpoint, storage_options=s3fs_storage_options)
    assert json.loads((first / MARKER).read_text())["identity"] == identity
    _delete_bucket_objects(s3_bucket, s3_endpoint)
    fs = s3fs.S3FileSystem(**s3fs_storage_options, skip_instance_cache=True)
    fs.put(str(tiny_checkpoint_v0) + "/", remote_checkpoint.removeprefix("s3://"), recursive=True)
    second = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    assert second != first
    assert _tree(second) == _tree(tiny_checkpoint_v0) and _tree(first) == _tree(tiny_checkpoint)
    _assert_clean_cache(tmp_path, 2)


def test_unreachable_storage_falls_back_to_the_newest_copy(
    remote_checkpoint: str, tmp_path: Path, s3fs_storage_options: dict, caplog: pytest.LogCaptureFixture
):
    path = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    unreachable = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "config_kwargs": {
        "connect_timeout": 1, "retries": {"max_attempts": 1}}}  # fmt: skip
    with caplog.at_level("WARNING", logger="unidiffuser.checkpoint"):
        again = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=unreachable)
    assert again == path
    assert f"cannot list checkpoint {remote_checkpoint}" in caplog.text and str(path) in caplog.text
    with pytest.raises(CheckpointError, match="cannot list checkpoint s3://.*EndpointConnectionError"):
        resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path / "empty", storage_options=unreachable)


def test_a_pinned_version_is_served_from_the_cache_or_refused(
    remote_checkpoint: str,
    tiny_checkpoint_v0: Path,
    s3_bucket: str,
    s3_endpoint: str,
    s3fs_storage_options: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """``identity`` pins a version: a cached copy of it serves without listing the remote; a remote that no
    longer has it is an error, where an unpinned load would switch to the new version."""
    options = s3fs_storage_options
    pinned = checkpoint_module.checkpoint_identity(remote_checkpoint, storage_options=options)
    path = resolve_checkpoint(
        remote_checkpoint, cache_dir=tmp_path / "a", storage_options=options, identity=pinned
    )
    _delete_bucket_objects(s3_bucket, s3_endpoint)
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.put(str(tiny_checkpoint_v0) + "/", remote_checkpoint.removeprefix("s3://"), recursive=True)
    with monkeypatch.context() as patched:
        patched.setattr(checkpoint_module, "checkpoint_identity", lambda *a, **k: pytest.fail("listed"))
        same = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path / "a", storage_options=options,
                                  identity=pinned)  # fmt: skip
    assert same == path
    with pytest.raises(
        CheckpointChangedError, match=f"changed since it was pinned \\(version {pinned}, now "
    ):
        resolve_checkpoint(
            remote_checkpoint, cache_dir=tmp_path / "b", storage_options=options, identity=pinned
        )
    assert resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path / "b", storage_options=options) != path


def test_local_checkpoint_identity_follows_its_files(tiny_checkpoint: Path, tmp_path: Path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    identity = checkpoint_module.checkpoint_identity(folder)
    assert checkpoint_module.checkpoint_identity(f"file://{folder}") == identity  # stable, read-only
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten
    assert checkpoint_module.checkpoint_identity(folder) != identity
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_module.checkpoint_identity(tmp_path / "absent")


def test_s3_credentials_from_environment(remote_checkpoint: str, tmp_path: Path, local_outputs):
    """Without storage options, the AWS_* environment (endpoint, keys) is enough."""
    engine = _load(remote_checkpoint, cache_dir=tmp_path)
    assert _outputs(engine) == local_outputs


def test_default_cache_dir_from_environment(
    remote_checkpoint: str, tmp_path: Path, s3fs_storage_options: dict, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("UNIDIFFUSER_CACHE", str(tmp_path / "node-cache"))
    path = resolve_checkpoint(remote_checkpoint, storage_options=s3fs_storage_options)
    assert path.parent == tmp_path / "node-cache" / "checkpoints"
    assert (path / MARKER).is_file()


def test_distinct_uris_get_distinct_cache_entries(
    tiny_checkpoint_v0: Path,
    remote_checkpoint: str,
    s3_bucket: str,
    s3fs_storage_options: dict,
    tmp_path: Path,
):
    fs = s3fs.S3FileSystem(**s3fs_storage_options, skip_instance_cache=True)
    fs.put(str(tiny_checkpoint_v0) + "/", f"{s3_bucket}/models/tiny-v0", recursive=True)
    v1 = _load(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    v0 = _load(f"s3://{s3_bucket}/models/tiny-v0", cache_dir=tmp_path, storage_options=s3fs_storage_options)
    assert v0.components.path != v1.components.path
    assert v1.components.uvit.config.use_data_type_embedding
    assert not v0.components.uvit.config.use_data_type_embedding
    _assert_clean_cache(tmp_path, 2)


def test_missing_remote_uri(s3_bucket: str, s3fs_storage_options: dict, tmp_path: Path):
    for uri in (f"s3://{s3_bucket}/no/such/checkpoint", "s3://no-such-bucket-for-tests/model"):
        with pytest.raises(CheckpointError, match="not found") as info:
            _load(uri, cache_dir=tmp_path, storage_options=s3fs_storage_options)
        assert uri in str(info.value)
    _assert_clean_cache(tmp_path, 0)


def test_stale_incomplete_cache_is_replaced(
    remote_checkpoint: str, tiny_checkpoint: Path, tmp_path: Path, s3fs_storage_options: dict, local_outputs
):
    """A copy without the completion marker (a crashed download) is downloaded again, not trusted."""
    path = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    (path / MARKER).unlink()
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half a file")
    (path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (path / "junk-from-crash").write_text("x")

    again = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    assert again == path
    assert (path / MARKER).is_file()
    assert not (path / "junk-from-crash").exists()
    assert _tree(path) == _tree(tiny_checkpoint)
    _assert_clean_cache(tmp_path, 1)
    assert _outputs(_load(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)) == (
        local_outputs
    )


def test_failed_download_leaves_nothing_behind(
    remote_checkpoint: str, tmp_path: Path, s3fs_storage_options: dict, monkeypatch: pytest.MonkeyPatch
):
    """A download that dies half way leaves no partial copy and no temporary folder; the next one works."""
    real_url_to_fs = fsspec.core.url_to_fs

    class DyingFS:
        def __init__(self, fs):
            self._fs = fs

        def __getattr__(self, name):
            return getattr(self._fs, name)

        def get(self, rpath, lpath, recursive=False, **kwargs):
            self._fs.get(rpath.rstrip("/") + "/unet/", str(Path(lpath) / "unet"), recursive=True)
            assert any(Path(lpath).rglob("*.safetensors"))  # it really wrote part of the copy
            raise ConnectionResetError("connection reset by peer")

    def dying_url_to_fs(uri, **kwargs):
        fs, root = real_url_to_fs(uri, **kwargs)
        return DyingFS(fs), root

    monkeypatch.setattr(fsspec.core, "url_to_fs", dying_url_to_fs)
    with pytest.raises(OSError, match="connection reset"):
        resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    _assert_clean_cache(tmp_path, 0)

    monkeypatch.undo()
    path = resolve_checkpoint(remote_checkpoint, cache_dir=tmp_path, storage_options=s3fs_storage_options)
    assert _assert_clean_cache(tmp_path, 1) == path


# ------------------------------------------------------------------------------------------------------------
# two processes, one node, one empty cache
# ------------------------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import numpy as np

    from unidiffuser import UniDiffuserEngine
    from unidiffuser import checkpoint as ckpt

    uri, cache, options, workdir, name = sys.argv[1:]
    workdir = Path(workdir)
    downloads = []
    real_download = ckpt._download

    def counting_download(*args, **kwargs):
        downloads.append(time.time())
        return real_download(*args, **kwargs)

    ckpt._download = counting_download
    (workdir / f"{name}.ready").touch()
    deadline = time.time() + 120
    while not (workdir / "go").exists():  # start both loads at the same moment
        if time.time() > deadline:
            sys.exit("never told to go")
        time.sleep(0.005)
    engine = UniDiffuserEngine.from_pretrained(
        uri, cache_dir=cache, storage_options=json.loads(options), steps=2
    )
    results = engine.t2i(json.loads(os.environ["TEST_PROMPTS"]), seeds=json.loads(os.environ["TEST_SEEDS"]))
    np.save(workdir / f"{name}.npy", np.stack([r.image for r in results]))
    (workdir / f"{name}.json").write_text(
        json.dumps({"path": str(engine.components.path), "downloads": len(downloads)})
    )
    """
)


@pytest.mark.slow
def test_two_processes_share_one_cache(
    remote_checkpoint: str, tiny_checkpoint: Path, tmp_path: Path, s3fs_storage_options: dict, local_outputs
):
    cache, workdir = tmp_path / "cache", tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "TEST_PROMPTS": json.dumps(PROMPTS), "TEST_SEEDS": json.dumps(SEEDS)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                remote_checkpoint,
                str(cache),
                json.dumps(s3fs_storage_options),
                str(workdir),
                name,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((workdir / f"{n}.ready").exists() for n in ("a", "b")):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (workdir / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]

    reports = [json.loads((workdir / f"{n}.json").read_text()) for n in ("a", "b")]
    assert reports[0]["path"] == reports[1]["path"]
    # the lock serialised them: exactly one process copied, the other found the finished copy
    assert sorted(r["downloads"] for r in reports) == [0, 1]
    path = _assert_clean_cache(cache, 1)
    assert str(path) == reports[0]["path"]
    assert _tree(path) == _tree(tiny_checkpoint)

    images = [np.load(workdir / f"{n}.npy") for n in ("a", "b")]
    assert np.array_equal(images[0], images[1])
    assert [im.tobytes() for im in images[0]] == local_outputs  # and the same as in this process
