"""``inspect``'s text histogram: one bar per bin, every bin labelled by edges that read differently."""

from __future__ import annotations

from jobs.inspect_output import histogram


def test_histogram_of_tiny_scores_has_distinct_bin_labels() -> None:
    lines = histogram([0.0, 1e-5, 2e-5, 4e-5, None, float("nan")], bins=4)
    assert len(lines) == 4
    ranges = [line.split("|")[0].strip() for line in lines]
    assert len(set(ranges)) == 4, ranges
    assert "+0.000 .. +0.000" not in ranges
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == 4  # None and NaN are not scores


def test_histogram_without_scores_says_so() -> None:
    assert histogram([None, float("nan")]) == ["  (no scores)"]
