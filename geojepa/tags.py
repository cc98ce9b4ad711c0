"""Which OSM tags reach the model: exclusion of metadata and identifying keys (SPEC section 2)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

DEFAULT_EXCLUDED_KEYS: tuple[str, ...] = (
    "source*",
    "created_by",
    "tiger:*",
    "import*",
    "note*",
    "fixme*",
    "FIXME*",
    "name*",
    "*:wikidata",
    "*:wikipedia",
    "wikidata",
    "wikipedia",
    "addr:*",
    "ref:*",
    "website",
    "phone",
    "email",
    "contact:*",
)
"""Key patterns (shell-style, case-sensitive) dropped by default.

The first block is SPEC section 2; ``wikidata``/``wikipedia`` without a prefix, ``FIXME`` and
``contact:*`` are ours: they identify a single feature or are notes to mappers, and carry nothing
a model should learn from. ``name*`` also removes ``name:en``, ``old_name`` is kept on purpose
(rare, and often descriptive).
"""


class TagFilter:
    """Decide per key whether a tag is kept, caching the decision for each distinct key.

    Args:
        excluded: Shell-style key patterns to drop (see :data:`DEFAULT_EXCLUDED_KEYS`).
    """

    def __init__(self, excluded: Sequence[str] = DEFAULT_EXCLUDED_KEYS) -> None:
        self.excluded = tuple(excluded)
        pattern = "|".join(fnmatch.translate(p) for p in self.excluded) or r"(?!x)x"
        self._regex = re.compile(pattern)
        self._cache: dict[str, bool] = {}

    def keep(self, key: str) -> bool:
        """Return True when tags with ``key`` are kept."""
        decision = self._cache.get(key)
        if decision is None:
            decision = self._regex.match(key) is None
            self._cache[key] = decision
        return decision

    def apply(self, tags: Iterable[tuple[str, str]]) -> list[str]:
        """Return the kept tags of an object as ``key=value`` strings, in their original order."""
        keep = self.keep
        return [f"{k}={v}" for k, v in tags if keep(k)]

    def __reduce__(self) -> tuple[type, tuple[tuple[str, ...]]]:
        return (TagFilter, (self.excluded,))
