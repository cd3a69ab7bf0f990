"""GenerationRecord: validation, JSON round trip, the PNG ``parameters`` text."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unidiffuser.marks.record import GenerationRecord


def test_json_round_trip_keeps_every_field(record: GenerationRecord) -> None:
    unusual = dataclasses.replace(
        record, prompt='línea 1\r\nline 2 \u2028 🐱 "quoted" \\ back', guidance_scale=0.1 + 0.2
    )
    for value in (record, unusual, dataclasses.replace(record, prompt=None, mode="joint")):
        assert GenerationRecord.from_json(value.to_json()) == value
    assert json.loads(record.to_json())["key"] == "prompts-000003_0"
    assert "🐱" in unusual.to_json()  # kept as UTF-8, not \\u-escaped


def test_fields_are_validated_by_name(record: GenerationRecord) -> None:
    with pytest.raises(ValueError, match="GenerationRecord.seed must be int"):
        dataclasses.replace(record, seed="7")
    with pytest.raises(ValueError, match="GenerationRecord.steps must be int"):
        dataclasses.replace(record, steps=True)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        dataclasses.replace(record, guidance_scale=float("nan"))
    assert dataclasses.replace(record, guidance_scale=7).guidance_scale == 7.0
    assert isinstance(dataclasses.replace(record, guidance_scale=7).guidance_scale, float)


def test_from_json_names_missing_and_unknown_fields(record: GenerationRecord) -> None:
    values = record.to_dict()
    del values["seed"]
    values["colour"] = "red"
    with pytest.raises(ValueError, match="missing seed; unknown colour"):
        GenerationRecord.from_json(json.dumps(values))
    with pytest.raises(ValueError, match="not JSON"):
        GenerationRecord.from_json("{")
    with pytest.raises(ValueError, match="must be a JSON object"):
        GenerationRecord.from_json("[1]")


def test_parameters_text_is_the_a1111_layout(record: GenerationRecord) -> None:
    text = record.parameters_text()
    prompt, settings = text.split("\n")
    assert prompt == record.prompt
    assert settings.startswith("Steps: 25, CFG scale: 3.0, Seed: 1234567, ")
    pairs = dict(item.split(": ", 1) for item in settings.split(", ") if not item.startswith('"'))
    assert pairs["Model"] == '"s3://models/unidiffuser-shapes"'  # a ':' in a value: JSON-quoted
    assert pairs["Model version"] == '"sha256:3f2a9c0d"'
    assert pairs["Mode"] == "t2i" and pairs["Key"] == "prompts-000003_0"
    assert pairs["Software"] == "unidiffuser-batch 0.1.0"


def test_parameters_text_keeps_the_settings_on_the_last_line(record: GenerationRecord) -> None:
    multi_line = dataclasses.replace(record, prompt="first\nsecond")
    assert multi_line.parameters_text().split("\n")[:2] == ["first", "second"]
    assert multi_line.parameters_text().split("\n")[-1].startswith("Steps: 25")
    unconditional = dataclasses.replace(record, prompt=None, mode="joint")
    assert unconditional.parameters_text().startswith("\nSteps: 25")
    odd_job = dataclasses.replace(record, job="a, b")
    assert 'Job: "a, b"' in odd_job.parameters_text()
