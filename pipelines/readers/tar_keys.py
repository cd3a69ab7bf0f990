"""Whether the sample keys of a job's keyed sources (tar shards, img2dataset parquet shards) collide, decided
with per-source state only.

The rule is unchanged from the one that gathered every key on the driver: samples keep their own keys when
no key occurs twice among the job's keyed sources, else every such source prefixes its keys with its name
(``{name}/{key}``, plus ``-{index:09d}`` in a source that repeats a key itself). Instead of the key set the
planner holds one :class:`KeyDigest` per source (its count, smallest and largest key, whether it repeats a
key): sources whose key ranges do not overlap cannot share a key, which settles the question for corpora
named by shard (img2dataset, webdataset writers). Only sources whose ranges overlap are compared exactly,
in Ray tasks that hash their keys (see ``collides``), never on the driver.

Sources planned from a wids index or a job output's markers have no known keys: their digest is
``declared``, trusted unique (a wids index describes one dataset, and a job output's keys were proven
unique when it was written) and left out of the range check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyDigest:
    """What planning keeps of one source's sample keys."""

    count: int = 0
    first: str | None = None  # smallest key
    last: str | None = None  # largest key
    repeats: bool = False  # a key occurs twice within the source
    declared: bool = False  # keys unknown, declared unique by the metadata the source was planned from

    @classmethod
    def of(cls, keys: Iterable[str]) -> KeyDigest:
        """The digest of ``keys`` (held only while it is computed, in the counting task)."""
        seen: set[bytes] = set()
        first = last = None
        count = 0
        repeats = False
        for key in keys:
            count += 1
            first = key if first is None or key < first else first
            last = key if last is None or key > last else last
            digest = _hash(key)
            repeats = repeats or digest in seen
            seen.add(digest)
        return cls(count, first, last, repeats)


def overlapping_groups(digests: Sequence[KeyDigest]) -> list[list[int]]:
    """Indices of digests whose key ranges overlap, grouped (transitively); only groups of two or more."""
    ranged = sorted(
        (d.first, d.last, i) for i, d in enumerate(digests) if not d.declared and d.first is not None
    )
    groups: list[list[int]] = []
    current: list[int] = []
    current_last: str | None = None
    for first, last, i in ranged:
        if current and current_last is not None and first <= current_last:
            current.append(i)
            current_last = max(current_last, last) if last is not None else current_last
            continue
        if len(current) > 1:
            groups.append(current)
        current, current_last = [i], last
    if len(current) > 1:
        groups.append(current)
    return groups


def needs_prefixes(digests: Sequence[KeyDigest], collides: Callable[[list[list[int]]], list[bool]]) -> bool:
    """Whether keyed sources must prefix their keys: a source repeats a key, or two share one. ``collides``
    checks groups of sources with overlapping ranges exactly (one answer per group)."""
    if any(d.repeats for d in digests):
        return True
    groups = overlapping_groups(digests)
    return bool(groups) and any(collides(groups))


def shared_key(key_lists: Iterable[Iterable[str]]) -> bool:
    """Whether any key occurs in two of the lists (by 64-bit hashes; a shared hash is confirmed on the keys)."""
    owner: dict[bytes, tuple[int, str]] = {}
    for n, keys in enumerate(key_lists):
        for key in keys:
            digest = _hash(key)
            seen = owner.setdefault(digest, (n, key))
            if seen[0] != n and seen[1] == key:
                return True
    return False


def _hash(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()
