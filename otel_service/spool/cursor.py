"""The ledger: how far the export side got, as positions in the spool, saved atomically.

A ``Position`` is (segment number, byte offset). The cursor file holds three of them::

    segment files:   | 1 ............ | 2 ...................... | 3 ......... (writer appends here)
                          ^committed = min(delivered, metrics): segments wholly before it are deleted
    delivered:       spans and logs accepted by the collector up to here
    metrics:         the totals of every event before it are saved (``checkpoint``; never ahead of it)
    inflight:        the end of the batch being sent when the cursor was written (>= delivered):
                     after a crash, records up to it are sent again and counted as possible duplicates
    stored:          (with an event store) every event before it is in the store, or counted as not
                     stored in the metric checkpoint; ``committed`` waits for it too

``export.progress`` owns the rules that move them; this module only stores them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cursor", "Position", "read_cursor", "write_cursor"]

CURSOR_FILE = "cursor"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far the exporter got. ``delivered``: spans and logs accepted by the collector;
    ``metrics``: the metric checkpoint's position; ``inflight``: the end of the
    batch being sent when the cursor was written; ``stored``: the event store's, ``None`` without one.
    Everything before ``committed`` (the least of the first two and ``stored``) is done, and segments
    wholly before it are deleted."""

    delivered: Position
    metrics: Position
    inflight: Position
    stored: Position | None = None

    @property
    def committed(self) -> Position:
        done = min(self.delivered, self.metrics)
        return done if self.stored is None else min(done, self.stored)

    @classmethod
    def at(cls, position: Position) -> Cursor:
        return cls(position, position, position)

    def dumps(self) -> str:
        positions = (self.delivered, self.metrics, self.inflight)
        text = " ".join(f"{p.segment} {p.offset}" for p in positions)
        return text if self.stored is None else f"{text} stored {self.stored.segment} {self.stored.offset}"

    @classmethod
    def loads(cls, text: str) -> Cursor:
        head, _, tail = text.partition("stored")
        try:
            numbers = [int(part) for part in head.split()]
            stored = [int(part) for part in tail.split()]
        except ValueError:
            raise ValueError(f"bad cursor {text!r}") from None
        # 8 numbers: with the metric push under way, before checkpoints.
        if len(numbers) not in (6, 8) or len(stored) not in (0, 2) or (len(numbers) == 8 and stored):
            raise ValueError(f"bad cursor {text!r}")
        delivered, metrics, inflight = (Position(numbers[k], numbers[k + 1]) for k in (0, 2, 4))
        return cls(delivered, metrics, max(delivered, inflight), Position(*stored) if stored else None)


def read_cursor(directory: Path) -> Cursor | None:
    try:
        return Cursor.loads((directory / CURSOR_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_cursor(directory: Path, cursor: Cursor) -> None:
    """Replace ``directory``'s cursor atomically (write a temporary file, then rename it)."""
    tmp = directory / (CURSOR_FILE + ".tmp")
    tmp.write_text(cursor.dumps() + "\n")
    os.replace(tmp, directory / CURSOR_FILE)
