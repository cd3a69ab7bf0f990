"""The generation record a marked image carries: what made it (software, model and its version) and how (mode,
prompt, seed, sampler settings), and which job and record it belongs to.

One frozen value, three renderings: JSON (``to_json`` / ``from_json``, lossless), the XMP properties of
``unidiffuser.marks.xmp`` and the one-paragraph ``parameters`` text other generators (AUTOMATIC1111's web UI
and the tools that read it) put in a PNG::

    record = GenerationRecord(software="unidiffuser-batch", software_version="0.1.0",
                              model_id="s3://models/unidiffuser-v1", model_version="3f2a...", mode="t2i",
                              prompt="a red circle", seed=7, steps=25, guidance_scale=3.0,
                              cfg_mode="true_uncond", data_type=1, dtype="float32", job="demo", key="p-000001_0")
    record.parameters_text()
    # 'a red circle\\nSteps: 25, CFG scale: 3.0, Seed: 7, Model: s3://models/unidiffuser-v1, ...'
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

# field name -> accepted types (bool is refused where int is meant: it is an int subclass)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "software": (str,),
    "software_version": (str,),
    "model_id": (str,),
    "model_version": (str,),
    "mode": (str,),
    "prompt": (str, type(None)),
    "seed": (int,),
    "steps": (int,),
    "guidance_scale": (float, int),
    "cfg_mode": (str,),
    "data_type": (int,),
    "dtype": (str,),
    "job": (str,),
    "key": (str,),
}


@dataclass(frozen=True, kw_only=True)
class GenerationRecord:
    """What made one generated image and how; every field is a str, int, float or (prompt only) None."""

    software: str
    software_version: str
    model_id: str  # the checkpoint's URI or name as the job spec gives it
    model_version: str  # the checkpoint's identity (unidiffuser.checkpoint.checkpoint_identity)
    mode: str  # t2i, joint, image, i2t2i, ...
    prompt: str | None = None  # the conditioning text; None for modes without one
    seed: int
    steps: int
    guidance_scale: float
    cfg_mode: str
    data_type: int
    dtype: str
    job: str
    key: str  # the record key the image was written under

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            allowed = _FIELD_TYPES[field.name]
            if isinstance(value, bool) or not isinstance(value, allowed):
                names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"GenerationRecord.{field.name} must be {names}, got {value!r}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"GenerationRecord.guidance_scale must be finite, got {self.guidance_scale!r}")
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, in declaration order."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Compact JSON with the fields in declaration order; non-ASCII text is kept as it is."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationRecord:
        """The record of ``values``; ValueError naming missing or unknown fields."""
        missing = sorted(set(_FIELD_TYPES) - set(values) - {"prompt"})
        unknown = sorted(set(values) - set(_FIELD_TYPES))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else []
            )
            raise ValueError(f"not a generation record: {'; '.join(problems)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> GenerationRecord:
        """The record ``to_json`` wrote; ValueError for anything else."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"generation record is not JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"generation record must be a JSON object, got {type(values).__name__}")
        return cls.from_dict(values)

    def parameters_text(self) -> str:
        """The PNG ``parameters`` text: the prompt (empty without one), then one line of ``Name: value`` pairs.

        AUTOMATIC1111's layout, which its readers (and exiftool, as ``Parameters``) parse: the settings line is
        the last line, a value holding ``,``, ``:`` or a line break is JSON-quoted.
        """
        settings = {
            "Steps": self.steps,
            "CFG scale": self.guidance_scale,
            "Seed": self.seed,
            "Model": self.model_id,
            "Model version": self.model_version,
            "Mode": self.mode,
            "CFG mode": self.cfg_mode,
            "Data type": self.data_type,
            "Dtype": self.dtype,
            "Job": self.job,
            "Key": self.key,
            "Software": f"{self.software} {self.software_version}",
        }
        line = ", ".join(f"{name}: {_quote(str(value))}" for name, value in settings.items())
        return f"{self.prompt or ''}\n{line}"


def _quote(value: str) -> str:
    """A settings value as A1111 writes it: JSON-quoted when it would break the ``Name: value, ...`` line."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:\n\r"') else value
