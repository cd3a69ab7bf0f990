"""A prompt blocklist (``curation.blocklist``): prompts matching an entry are rejected before generation.

The file holds one entry per line: a word or phrase, matched whole and in any case (``knife`` matches "A
Knife." but not "knifes"), or a regular expression between slashes (``/gun(s)?/``, searched, case-sensitive
unless it says ``(?i)``). Blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unidiffuser.locations import describe_error, open_location, redact

BLOCKLIST_RULE = "prompt blocklist"


class BlocklistError(ValueError):
    """The blocklist cannot be read or holds an invalid regular expression (the message names the line)."""


@dataclass(frozen=True)
class Blocklist:
    """The entries of a blocklist file, compiled; ``digest`` identifies its content (for the job fingerprint)."""

    entries: tuple[str, ...]
    digest: str

    @classmethod
    def parse(cls, text: str, origin: str = "blocklist") -> Blocklist:
        entries = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) > 1 and line.startswith("/") and line.endswith("/"):
                try:
                    re.compile(line[1:-1])
                except re.error as exc:
                    raise BlocklistError(
                        f"{origin} line {number}: invalid regular expression {line!r}: {exc}"
                    ) from None
            entries.append(line)
        return cls(tuple(entries), hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16])

    @classmethod
    def load(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> Blocklist:
        """Read and parse the blocklist at ``uri`` (any location); BlocklistError naming it otherwise."""
        try:
            fs, path = open_location(uri, storage_options)
            text = fs.cat_file(path).decode("utf-8-sig")
        except Exception as exc:
            raise BlocklistError(f"cannot read {redact(uri)}: {describe_error(exc)}") from None
        return cls.parse(text, redact(uri))

    def match(self, prompt: str) -> str | None:
        """The first entry ``prompt`` matches, or None."""
        for pattern, entry in zip(self._patterns, self.entries, strict=True):
            if pattern.search(prompt):
                return entry
        return None

    @property
    def _patterns(self) -> tuple[re.Pattern[str], ...]:
        return _compile(self.entries)


@functools.lru_cache(maxsize=8)
def _compile(entries: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(
        re.compile(e[1:-1]) if len(e) > 1 and e.startswith("/") and e.endswith("/")
        else re.compile(rf"(?<!\w){re.escape(e)}(?!\w)", re.IGNORECASE)
        for e in entries
    )  # fmt: skip


def blocked_reason(entry: str) -> str:
    """The reason of a record whose prompt matched ``entry``."""
    return f"prompt matches blocklist entry {entry!r}"
