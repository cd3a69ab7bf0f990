"""Exact input de-duplication: one fingerprint per input, the first occurrence in plan order wins.

A prompt's fingerprint is its normalised text (``normalise_prompt``):

1. Unicode NFC (composed and decomposed spellings of one character are one),
2. every run of whitespace (any Unicode whitespace: spaces, tabs, newlines, no-break spaces) becomes one
   space, and leading/trailing whitespace is stripped,
3. case folded (``str.casefold``: ``"Straße"`` and ``"STRASSE"`` are one), then NFC again, since folding can
   leave a decomposed sequence.

Punctuation and the words themselves are kept: ``"a red circle."`` and ``"a red circle"`` differ (near-
duplicates of that kind are the embedding search's job). An image's fingerprint is the sha256 of its bytes
(``image_fingerprint``): the same file twice, not the same picture re-encoded (that is pHash's job).

``first_occurrences`` is order-defined: for each fingerprint, the first key in the given order (the plan's
order) is kept and every later key with that fingerprint maps to it.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence


def normalise_prompt(text: str) -> str:
    """The prompt as compared for exact duplicates: NFC, whitespace collapsed and stripped, case folded."""
    composed = unicodedata.normalize("NFC", text)
    collapsed = " ".join(composed.split())
    return unicodedata.normalize("NFC", collapsed.casefold())


def prompt_fingerprint(text: str) -> str:
    """sha256 hex of the normalised prompt (UTF-8): a fixed-size fingerprint to store or compare."""
    return hashlib.sha256(normalise_prompt(text).encode("utf-8")).hexdigest()


def image_fingerprint(data: bytes) -> str:
    """sha256 hex of an image's encoded bytes."""
    return hashlib.sha256(data).hexdigest()


def first_occurrences(keys: Sequence[str], fingerprints: Sequence[str | None]) -> dict[str, str]:
    """``{duplicate key: key of the first record with the same fingerprint}``, in the order given.

    A ``None`` fingerprint (a record without a prompt or image, e.g. an error row) is never a duplicate.
    Raises ValueError when the sequences differ in length or a key repeats.
    """
    if len(keys) != len(fingerprints):
        raise ValueError(f"{len(keys)} keys but {len(fingerprints)} fingerprints")
    first_of: dict[str, str] = {}
    seen_keys: set[str] = set()
    duplicates: dict[str, str] = {}
    for key, fingerprint in zip(keys, fingerprints, strict=True):
        if key in seen_keys:
            raise ValueError(f"key {key!r} appears twice")
        seen_keys.add(key)
        if fingerprint is None:
            continue
        first = first_of.setdefault(fingerprint, key)
        if first != key:
            duplicates[key] = first
    return duplicates


def exact_duplicate_reason(first_key: str) -> str:
    """The reason string of a record removed as an exact duplicate."""
    return f"exact duplicate of {first_key}"
