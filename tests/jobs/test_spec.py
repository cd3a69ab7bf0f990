"""Job specs: parsing, overrides, every problem reported at once with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.spec import SpecError, apply_overrides, load_spec, parse_spec

SPECS = Path(__file__).resolve().parents[2] / "jobs" / "specs"
MINIMAL = {
    "input": {"kind": "prompts", "uri": "prompts.txt"},
    "model": {"checkpoint": "ckpt"},
    "output": {"uri": "out"},
}


def _problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def test_minimal_spec_gets_defaults():
    config = parse_spec(MINIMAL)
    assert config.model.steps == 50 and config.model.guidance_scale == 7.0
    assert config.model.mode.value == "t2i" and config.output.shard_size == 1000
    assert config.clip.enabled is False and config.seed == 0


def test_every_problem_is_reported_at_once_with_its_key_path():
    data = {
        "input": {"kind": "prompts", "uri": "p.txt", "colour": "red"},
        "model": {"checkpoint": "c", "steps": 0, "guidance_scale": "high", "dtype": "float8"},
        "output": {"uri": "o", "shard_size": -5, "formats": ["tfrecord"]},
        "resources": {"actors": 0},
        "surprise": 1,
    }
    problems = _problems(data)
    joined = "\n".join(problems)
    for path in (
        "input.colour: unknown key",
        "model.steps",
        "model.guidance_scale",
        "model.dtype",
        "output.shard_size",
        "output.formats",
        "resources.actors",
        "surprise: unknown key",
    ):
        assert path in joined, path
    assert len(problems) >= 8


@pytest.mark.parametrize(
    ("mode", "kind", "extra"),
    [
        ("i2t", "prompts", {"uri": "p.txt"}),
        ("t2i", "images", {"uri": "imgs"}),
        ("joint", "prompts", {"uri": "p"}),
    ],
)
def test_mode_must_match_input_kind(mode: str, kind: str, extra: dict):
    data = {**MINIMAL, "input": {"kind": kind, **extra}, "model": {"checkpoint": "c", "mode": mode}}
    (problem,) = _problems(data)
    assert f"model.mode {mode!r} needs input.kind" in problem


def test_count_needs_a_count_and_files_need_a_uri():
    assert any("input.count is required" in p for p in _problems({**MINIMAL, "input": {"kind": "count"}}))
    assert any("input.uri is required" in p for p in _problems({**MINIMAL, "input": {"kind": "images"}}))


def test_keep_fields_need_input_records():
    count = {"kind": "count", "count": 3, "keep_fields": ["id"]}
    assert any("kind 'count' has no fields to keep" in p for p in _problems({**MINIMAL, "input": count}))
    images = {**MINIMAL, "input": {"kind": "images", "uri": "imgs", "keep_fields": ["url"]},
              "model": {"checkpoint": "c", "mode": "i2t"}}  # fmt: skip
    assert parse_spec(images).input.keep_fields == ["url"]


def test_engine_only_modes_are_refused_by_pipelines():
    data = {**MINIMAL, "model": {"checkpoint": "c", "mode": "interpolate"}}
    assert any("runs in the engine only" in p for p in _problems(data))


def test_clip_bounds_and_model():
    assert any("clip.model is required" in p for p in _problems({**MINIMAL, "clip": {"enabled": True}}))
    bad = {**MINIMAL, "clip": {"enabled": True, "model": "m", "min_score": 0.5, "max_score": 0.1}}
    assert any("min_score must not exceed" in p for p in _problems(bad))


def test_overrides_set_nested_values_with_yaml_types():
    data = apply_overrides(
        {"model": {"steps": 50}},
        ["model.steps=25", "model.guidance_scale=3.5", "output.formats=[parquet]", "clip.enabled=false"],
    )
    assert data == {
        "model": {"steps": 25, "guidance_scale": 3.5},
        "output": {"formats": ["parquet"]},
        "clip": {"enabled": False},
    }
    with pytest.raises(SpecError, match="expected key.path=value"):
        apply_overrides({}, ["model.steps"])
    with pytest.raises(SpecError, match="not a section"):
        apply_overrides({"model": 3}, ["model.steps=2"])


def test_load_spec_resolves_relative_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Paths in the spec file are relative to its folder, paths given with --set to the current folder."""
    folder, elsewhere = tmp_path / "specs", tmp_path / "cwd"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump({**MINIMAL, "model": {"checkpoint": "s3://b/ckpt"}}))
    monkeypatch.chdir(elsewhere)
    config = load_spec(
        folder / "spec.yaml", ["output.uri=results", "clip.model=../clip", "clip.enabled=true"]
    )
    assert config.input.uri == str(folder / "prompts.txt")
    assert config.output.uri == str(elsewhere / "results")
    assert config.clip.model == str(tmp_path / "clip")
    assert config.model.checkpoint == "s3://b/ckpt"  # URIs are left alone
    absolute = load_spec(folder / "spec.yaml", [f"output.uri={tmp_path}/abs", "input.uri=file:///x/p.txt"])
    assert (absolute.output.uri, absolute.input.uri) == (f"{tmp_path}/abs", "file:///x/p.txt")


def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path: Path):
    (tmp_path / "twice.yaml").write_text(
        "input: {kind: prompts, uri: p.txt}\nmodel:\n  checkpoint: c\n  steps: 20\n  steps: 30\noutput: {uri: o}\n"
    )
    with pytest.raises(SpecError, match=r"key 'steps' is given twice \(lines 4 and 5\)"):
        load_spec(tmp_path / "twice.yaml")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("model", "steps", True),
        ("model", "guidance_scale", "7"),
        ("output", "shard_size", 2.5),
        ("clip", "enabled", 1),
    ],
)
def test_numbers_and_booleans_are_taken_only_as_themselves(section: str, key: str, value: object):
    data = {**MINIMAL, section: {**MINIMAL.get(section, {}), key: value}}
    assert any(p.startswith(f"{section}.{key}:") for p in _problems(data))


def test_an_integer_is_a_valid_float():
    assert (
        parse_spec({**MINIMAL, "model": {"checkpoint": "c", "guidance_scale": 3}}).model.guidance_scale == 3.0
    )


def test_load_spec_errors(tmp_path: Path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("input: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping of sections"):
        load_spec(tmp_path / "list.yaml")


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(spec: Path):
    config = load_spec(spec)
    assert config.name
    for location in (config.input.uri, config.model.checkpoint, config.output.uri):
        assert location is None or "://" in location or Path(location).is_absolute(), location


def test_storage_options_carry_no_secrets():
    config = parse_spec(
        {**MINIMAL, "storage": {"endpoint_url": "http://minio:9000", "region": "eu", "profile": "p"}}
    )
    options = config.storage.storage_options()
    assert options == {
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu"},
        "profile": "p",
    }
    assert "secret" not in str(options) and "key" not in options
    with pytest.raises(SpecError, match="storage.secret_access_key: unknown key"):
        parse_spec({**MINIMAL, "storage": {"secret_access_key": "nope"}})
