"""Job-unique, stable, dot-free names for input files, from which record keys are built.

Record keys never hold a ``.``: webdataset splits a tar member's name into key and extension at the first
``.`` of its basename and Hugging Face ``datasets``' webdataset loader at the first ``.`` of the whole member
path, so a key with a dot would come back from those readers as another key (and the output's ``key``
column would not join with their ``__key__``). :func:`dot_free` makes a name dot-free (``.`` becomes
``_``); :func:`unique_names` keeps the dot-free names of a listing unique.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Sequence

DOT_REPLACEMENT = "_"


def dot_free(name: str) -> str:
    """``name`` with every ``.`` replaced by ``_`` (what record keys are made of; see the module doc)."""
    return name.replace(".", DOT_REPLACEMENT)


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _without_extension(path: str) -> str:
    return posixpath.splitext(path)[0]


def _whole(path: str) -> str:
    return path


def _hashed(path: str) -> str:
    """The last resort: the path plus a hash of it (only for paths whose dot-free forms coincide)."""
    return f"{path}-{hashlib.blake2b(path.encode(), digest_size=6).hexdigest()}"


def unique_names(relpaths: Sequence[str], *, use_stem: bool | Sequence[bool] = True) -> list[str]:
    """Job-unique, stable, dot-free names for files, used to build record keys.

    Each file gets the first of these that no other file in the listing shares, made dot-free: its stem
    (if ``use_stem``, which may be given per file), its relative path without extension, its relative path,
    its relative path with a short hash of it (only reached by paths that differ only where the dot-free
    form hides it, e.g. ``a.b.png`` and ``a_b.png``). Names only change when a colliding file is added.
    """
    per_file = [use_stem] * len(relpaths) if isinstance(use_stem, bool) else list(use_stem)
    if len(per_file) != len(relpaths):
        raise ValueError(f"use_stem gives {len(per_file)} flags for {len(relpaths)} paths")
    chains: list[list[Callable[[str], str]]] = [
        [*([_stem] if stem else []), _without_extension, _whole, _hashed] for stem in per_file
    ]
    names: list[str | None] = [None] * len(relpaths)
    pending = list(range(len(relpaths)))
    for level in range(max((len(c) for c in chains), default=0)):
        proposed = {i: dot_free(chains[i][min(level, len(chains[i]) - 1)](relpaths[i])) for i in pending}
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
        names[i] = dot_free(f"{relpaths[i]}-{i}")
    return [n for n in names if n is not None]
