"""The columns one record carries from reader to shard.

Every stage after preprocess is a 1:1 row map (nothing is dropped), so one record can be followed by its
``key`` from the reader to the writer (preprocess may draw several samples of one input, see INPUT_KEY). A
record's ``unit`` is the output shard it belongs to; a unit is read as one block, processed as one block and
committed as one shard, which is what makes resume exact.
"""

from __future__ import annotations

import math
from enum import StrEnum

import pandas as pd
import pyarrow as pa

# --- written by readers -------------------------------------------------------------------------------------
KEY = "key"  # stable record key, unique within a job; carried to every output
SOURCE = "source"  # where the record came from (file URI, or "count")
UNIT = "unit"  # int: output shard index this record belongs to
PROMPT = "prompt"  # the input's text: the prompt (t2i, t2i2t) or an input image's own caption, or None
IMAGE_BYTES = "image_bytes"  # encoded input image (i2t, i2t2i), or None
READ_ERROR = "read_error"  # reason the reader could not produce the input, or None
METADATA = "metadata"  # JSON object of the input record's fields named in input.keep_fields, or None

# --- written by preprocess ----------------------------------------------------------------------------------
# With ``model.samples_per_input`` > 1 preprocess turns each input into that many records ("samples"): each
# has its own KEY ``{input key}_{sample}`` and so its own seed; with 1 the KEY is the input key itself.
INPUT_KEY = "input_key"  # the key of the input record a sample was drawn for
SAMPLE = "sample"  # int: the sample's index among its input's samples (0 with one sample per input)
SEED = "seed"  # int64 per-record seed derived from job seed + key
PIXELS = "pixels"  # raw RGB bytes of the input at model resolution (see pipelines/pixels.py), or None
FLAGS = "flags"  # list of what was done to the input on the way (converted_from_RGBA, prompt_truncated, ...)
STARTED_AT = "started_at"  # float: when the unit's preprocessing began (UNIX time; for the unit's stats)
SOURCE_IMAGE = "source_image"  # i2t: the input file's bytes, kept for the shards (output.caption_image)

# --- written by the generate / score / filter stages ---------------------------------------------------------
MODE = "mode"
TEXT = "text"  # the text paired with the output image: the prompt (t2i) or the generated caption
GENERATED_CAPTION = "generated_caption"  # the model's caption (i2t, joint, text, t2i2t), or None
PROMPT_USED = "prompt_used"  # for a prompt cut to the text encoder's 77 tokens: the part the model saw
OUT_PIXELS = "out_pixels"  # raw RGB bytes of the output image (square), or None
CLIP_SCORE = "clip_score"
IMAGE_EMBEDDING = "img_emb"  # L2-normalised CLIP image embedding (float32 list)
TEXT_EMBEDDING = "text_emb"  # L2-normalised CLIP text embedding (float32 list)
STATUS = "status"  # Status value
REASON = "reason"  # why a record was rejected or errored (every failed bound, with its value), or None
REJECT_RULES = "rejected_by"  # list of the rules a rejected record failed (``aesthetic < min 5.0``, ...)
MODEL_ID = "model_id"
PARAMS = "params"  # JSON of the generation parameters

# --- written by the writers (output shard columns, see pipelines/writers) -----------------------------------
# The input's text is written as PROMPT for text-input modes and as SOURCE_CAPTION for image-input modes, so
# a corpus's own caption (img2dataset's ``caption``) is never mistaken for a prompt or a generated caption.
SOURCE_CAPTION = "source_caption"  # the caption an input image came with (i2t, i2t2i), or None
SYNTHETIC = (
    "synthetic"  # list of the fields the model made (image, generated_caption, text): the rest is input
)
PHASH = "phash"  # 64-bit perceptual hash of the written image (16 hex digits), or None
IMAGE = "image"  # encoded output image bytes, or None for text-only outputs
IMAGE_FORMAT = "image_format"  # "jpg", "png" or "webp", or None
WIDTH = "width"
HEIGHT = "height"


def missing(value: object) -> bool:
    """Whether a cell is empty: None, pandas' NA or a float NaN (pandas batches use all three)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class Status(StrEnum):
    """Where a record ends: every input is exactly one of these."""

    OK = "ok"
    REJECTED = "rejected"
    ERROR = "error"


READER_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(UNIT, pa.int64(), nullable=False),
        pa.field(PROMPT, pa.string()),
        pa.field(IMAGE_BYTES, pa.binary()),
        pa.field(READ_ERROR, pa.string()),
        pa.field(METADATA, pa.string()),
    ]
)
