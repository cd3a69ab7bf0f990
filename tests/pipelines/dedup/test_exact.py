"""Exact input de-duplication: the documented prompt normalisation and first occurrences in plan order."""

from __future__ import annotations

import hashlib

import pytest

from pipelines.dedup.exact import (
    exact_duplicate_reason,
    first_occurrences,
    image_fingerprint,
    normalise_prompt,
    prompt_fingerprint,
)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("A red circle", "a red circle"),  # case
        ("  a red\tcircle \n", "a red circle"),  # whitespace collapsed and stripped
        ("a\u00a0red\u2003circle", "a red circle"),  # Unicode spaces are whitespace too
        ("caf\u00e9", "cafe\u0301"),  # NFC: composed and decomposed é
        ("STRASSE", "stra\u00dfe"),  # case folding, not just lower-casing
        ("\u00c9T\u00c9", "e\u0301te\u0301"),  # folded then composed
    ],
)
def test_normalisation_makes_spellings_of_one_prompt_equal(a: str, b: str) -> None:
    assert normalise_prompt(a) == normalise_prompt(b)
    assert prompt_fingerprint(a) == prompt_fingerprint(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("a red circle.", "a red circle"), ("a red circle", "a red square"), ("redcircle", "red circle")],
)
def test_normalisation_keeps_words_and_punctuation(a: str, b: str) -> None:
    assert normalise_prompt(a) != normalise_prompt(b)


def test_normalised_form_is_documented_one() -> None:
    assert normalise_prompt("  Caf\u0065\u0301  AU\tLait ") == "caf\u00e9 au lait"
    assert prompt_fingerprint("x") == hashlib.sha256(b"x").hexdigest()


def test_first_occurrence_in_plan_order_wins_not_the_smallest_key() -> None:
    keys = ["p-9", "p-3", "p-7", "p-1", "p-5"]
    prompts = ["A red circle", "a blue square", "a  red circle", "A BLUE SQUARE", "a green diamond"]
    duplicates = first_occurrences(keys, [normalise_prompt(p) for p in prompts])
    assert duplicates == {"p-7": "p-9", "p-1": "p-3"}
    # the same records in another order: the first of that order wins
    reordered = first_occurrences(keys[::-1], [normalise_prompt(p) for p in prompts[::-1]])
    assert reordered == {"p-9": "p-7", "p-3": "p-1"}


def test_later_duplicates_all_point_at_the_first() -> None:
    assert first_occurrences(["a", "b", "c", "d"], ["x", "x", "y", "x"]) == {"b": "a", "d": "a"}


def test_records_without_a_fingerprint_are_never_duplicates() -> None:
    assert first_occurrences(["a", "b", "c"], [None, None, "x"]) == {}


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="3 keys but 2 fingerprints"):
        first_occurrences(["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match="'a' appears twice"):
        first_occurrences(["a", "b", "a"], ["x", "y", "z"])


def test_image_fingerprint_is_sha256_of_the_bytes() -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert image_fingerprint(data) == hashlib.sha256(data).hexdigest()
    assert image_fingerprint(data) != image_fingerprint(data + b"\x00")
    keys = ["img-0", "img-1", "img-2"]
    assert first_occurrences(keys, [image_fingerprint(d) for d in (data, b"other", data)]) == {
        "img-2": "img-0"
    }


def test_reason() -> None:
    assert exact_duplicate_reason("p-9") == "exact duplicate of p-9"
