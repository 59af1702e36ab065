"""Cardinality guards for metric attributes: a cap per attribute, values that stopped arriving age
out, and values the operator names are always kept."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

__all__ = ["GUARDED_ATTRIBUTES", "OVERFLOW_VALUE", "LabelGuard"]

#: Stands for every value beyond an attribute's cap (the semantic conventions' "other" value).
OVERFLOW_VALUE = "_OTHER"

#: The metric attributes each guard's values appear in.
GUARDED_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "business_id": frozenset({"business_id"}),
    "model": frozenset({"gen_ai.request.model", "model", "model_name"}),
    "provider": frozenset({"gen_ai.provider.name"}),
    "intent": frozenset({"intent"}),
    "response_type": frozenset({"response_type"}),
    "error_type": frozenset({"error.type"}),
    "model_version": frozenset({"model_version"}),
    "prediction_result": frozenset({"prediction_result"}),
}


class LabelGuard:
    """Admits at most ``limit`` distinct values of one attribute besides the ``kept`` ones (always
    admitted, never aged out); a value beyond the cap becomes ``_OTHER``, unless admitted values have
    not been seen for ``idle_seconds`` (0: never age): those give their places up at once, and are
    handed out by ``take_aged`` so their series can be folded into ``_OTHER``.

    Times are wall-clock seconds: ``now`` is set by the caller once per batch, and the times survive
    a restart (``dump``/``restore``)."""

    __slots__ = ("_aged", "_idle_from", "idle_seconds", "kept", "limit", "name", "now", "overflowed", "seen")

    def __init__(self, name: str, limit: int, *, kept: Iterable[str] = (), idle_seconds: float = 0.0) -> None:
        self.name = name
        self.limit = limit
        self.kept = frozenset(kept)
        self.idle_seconds = idle_seconds
        #: Admitted value -> when it was last seen.
        self.seen: dict[str, float] = {}
        self.now = time.time()
        #: No admitted value can be idle before this time (so a flood of new values beyond the cap
        #: does not look for idle ones on every event).
        self._idle_from = 0.0
        self._aged: list[str] = []
        #: How many values were replaced since the last ``take_overflow``.
        self.overflowed = 0

    def __call__(self, value: str) -> str:
        seen = self.seen
        if value in seen:
            seen[value] = self.now
            return value
        if value in self.kept:
            return value
        if len(seen) < self.limit or (self.idle_seconds and self.now >= self._idle_from and self._age_out()):
            seen[value] = self.now
            return value
        self.overflowed += 1
        return OVERFLOW_VALUE

    def touch(self, value: str) -> None:
        """``value`` was seen again (an event whose cached plan holds it)."""
        if value in self.seen:
            self.seen[value] = self.now

    def _age_out(self) -> bool:
        """Give up the places of the values idle for ``idle_seconds``; whether any was."""
        cutoff = self.now - self.idle_seconds
        aged = [value for value, last in self.seen.items() if last <= cutoff]
        for value in aged:
            del self.seen[value]
        self._aged.extend(aged)
        self._idle_from = min(self.seen.values(), default=self.now) + self.idle_seconds
        return bool(aged)

    def take_aged(self) -> list[str]:
        """The values aged out since the last call."""
        aged, self._aged = self._aged, []
        return aged

    def take_overflow(self) -> int:
        count, self.overflowed = self.overflowed, 0
        return count

    def dump(self) -> dict[str, float]:
        return dict(self.seen)

    def restore(self, dumped: Mapping[str, float]) -> None:
        """Admit again the values a predecessor admitted, with when they were last seen (their series
        carry on)."""
        self.seen = {str(value): float(last) for value, last in dumped.items()}
        self._idle_from = 0.0
