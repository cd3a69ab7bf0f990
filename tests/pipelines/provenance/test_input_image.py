"""``read_input_image``: a record's input file read again from its corpus, without a job run. A loose image is
read alone (its own segment); a tar sample, whose key planning does not know, by reading its unit."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipelines.provenance import input_image
from pipelines.provenance.input_image import InputImageError, read_input_image
from pipelines.provenance.stored_record import StoredRecord
from pipelines.readers import datasource


def _stored(uri: str, key: str, unit: int, shard_size: int) -> StoredRecord:
    return StoredRecord(
        key=key,
        outcome="written",
        unit=unit,
        row={"key": key, "input_key": key},
        summary={
            "config": {
                "input": {"kind": "images", "uri": uri},
                "output": {"uri": "/out", "shard_size": shard_size},
            }
        },
        marks=None,
    )


def _png(i: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_loose_image_is_read_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, name in enumerate("abcd"):
        (tmp_path / f"{name}.png").write_bytes(_png(i))

    def no_unit_read(*args, **kwargs):
        raise AssertionError("the whole unit was read for a record planning names")

    monkeypatch.setattr(input_image, "read_unit", no_unit_read)
    assert read_input_image(_stored(str(tmp_path), "c", unit=1, shard_size=2), {}) == _png(2)
    monkeypatch.undo()  # a key planning does not name: the whole unit is read, and it is not there
    with pytest.raises(InputImageError, match=r"no input 'x' in unit 1"):
        read_input_image(_stored(str(tmp_path), "x", unit=1, shard_size=2), {})


def test_a_tar_sample_is_found_by_reading_its_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tarfile.open(tmp_path / "part-0.tar", "w") as tar:
        for i in range(4):
            data = _png(i)
            info = tarfile.TarInfo(f"s{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    units_read = []
    monkeypatch.setattr(
        input_image,
        "read_unit",
        lambda unit, options: units_read.append(unit.index) or datasource.read_unit(unit, options),
    )
    assert read_input_image(_stored(str(tmp_path), "s3", unit=1, shard_size=2), {}) == _png(3)
    assert units_read == [1]
