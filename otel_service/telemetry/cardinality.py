"""Cardinality guards for metric attributes."""

from __future__ import annotations

__all__ = ["OVERFLOW_VALUE", "LabelGuard"]

#: Stands for every value beyond an attribute's cap (the semantic conventions' "other" value).
OVERFLOW_VALUE = "_OTHER"


class LabelGuard:
    """Keeps at most ``limit`` distinct values of one attribute; later ones become ``_OTHER``."""

    __slots__ = ("limit", "name", "overflowed", "seen")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.seen: set[str] = set()
        #: How many values were replaced since the last ``take_overflow``.
        self.overflowed = 0

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        self.overflowed += 1
        return OVERFLOW_VALUE

    def dump(self) -> list[str]:
        return sorted(self.seen)

    def restore(self, dumped: list[str]) -> None:
        """Admit again the values a predecessor admitted (their series carry on)."""
        self.seen = {str(value) for value in dumped}

    def take_overflow(self) -> int:
        count, self.overflowed = self.overflowed, 0
        return count
