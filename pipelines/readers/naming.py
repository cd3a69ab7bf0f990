"""Job-unique, stable names for input files, from which record keys are built."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence


def unique_names(relpaths: Sequence[str], *, use_stem: bool = True) -> list[str]:
    """Job-unique, stable names for files, used to build record keys.

    Each file gets the first of these that no other file in the listing shares: its stem (if
    ``use_stem``), its relative path without extension, its relative path. Relative paths are unique
    within a listing, so the last always is. Names only change when a colliding file is added.
    """
    candidates: list[Callable[[str], str]] = [lambda p: posixpath.splitext(p)[0], lambda p: p]
    if use_stem:
        candidates.insert(0, lambda p: posixpath.splitext(posixpath.basename(p))[0])
    names: list[str | None] = [None] * len(relpaths)
    pending = list(range(len(relpaths)))
    for make in candidates:
        proposed = {i: make(relpaths[i]) for i in pending}
        counts: dict[str, int] = {}
        for name in proposed.values():
            counts[name] = counts.get(name, 0) + 1
        taken = {n for n in names if n is not None}
        still = []
        for i in pending:
            if counts[proposed[i]] == 1 and proposed[i] not in taken:
                names[i] = proposed[i]
            else:
                still.append(i)
        pending = still
    for i in pending:  # only reachable with duplicate relpaths
        names[i] = f"{relpaths[i]}-{i}"
    return [n for n in names if n is not None]
