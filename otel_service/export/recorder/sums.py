"""Counter increments of one batch, summed per (instrument, attribute set) and added once at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...telemetry.aggregates import FastCounter
from ...telemetry.histograms import Key

__all__ = ["Attrs", "Key", "Sum", "Sums", "key_of", "sum_of"]

Attrs = dict[str, Any]


def key_of(attrs: Attrs) -> Key:
    return tuple(attrs.items())


@dataclass(frozen=True, slots=True)
class Sum:
    """One counter and attribute set, with its key in ``Sums``."""

    key: tuple[int, Key]
    counter: FastCounter
    attrs: Attrs


def sum_of(counter: FastCounter, attrs: Attrs) -> Sum:
    return Sum((id(counter), tuple(attrs.items())), counter, attrs)


class Sums:
    """Counter increments of one batch, summed per (instrument, attribute set)."""

    __slots__ = ("_events", "_sums")

    def __init__(self) -> None:
        self._sums: dict[tuple[int, Key], list[Any]] = {}
        #: Events per plan's ``per_event`` entries (by identity), each counted on every entry at flush.
        self._events: dict[int, list[Any]] = {}

    def add_event(self, entries: tuple[Sum, ...]) -> None:
        """Count one event on each of ``entries`` (one dict update however many entries)."""
        slot = self._events.get(id(entries))
        if slot is None:
            self._events[id(entries)] = [entries, 1]
        else:
            slot[1] += 1

    def add(self, entry: Sum, value: float) -> None:
        slot = self._sums.get(entry.key)
        if slot is None:
            self._sums[entry.key] = [entry, value]
        else:
            slot[1] += value

    def flush(self) -> None:
        for entries, events in self._events.values():
            for entry in entries:
                self.add(entry, events)
        self._events.clear()
        for entry, value in self._sums.values():  # the recording worker holds the counters' lock
            entry.counter.add_key(entry.key[1], value)
        self._sums.clear()
