"""The ledger: how far the export side got, as positions in the spool, saved atomically.

A ``Position`` is (segment number, byte offset). The cursor file holds three of them::

    segment files:   | 1 ............ | 2 ...................... | 3 ......... (writer appends here)
                          ^committed = min(delivered, metrics): segments wholly before it are deleted
    delivered:       spans and logs accepted by the collector up to here
    metrics:         the totals of every event before it are saved (``checkpoint``; never ahead of it)
    inflight:        the end of the batch being sent when the cursor was written (>= delivered):
                     after a crash, records up to it are sent again and counted as possible duplicates

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
    batch being sent when the cursor was written. Everything before ``committed`` (the lesser of the
    first two) is done, and segments wholly before it are deleted."""

    delivered: Position
    metrics: Position
    inflight: Position

    @property
    def committed(self) -> Position:
        return min(self.delivered, self.metrics)

    @classmethod
    def at(cls, position: Position) -> Cursor:
        return cls(position, position, position)

    def dumps(self) -> str:
        positions = (self.delivered, self.metrics, self.inflight)
        return " ".join(f"{p.segment} {p.offset}" for p in positions)

    @classmethod
    def loads(cls, text: str) -> Cursor:
        numbers = [int(part) for part in text.split()]
        if len(numbers) not in (6, 8):  # 8: with the metric push under way, before checkpoints
            raise ValueError(f"bad cursor {text!r}")
        delivered, metrics, inflight = (Position(numbers[k], numbers[k + 1]) for k in (0, 2, 4))
        return cls(delivered, metrics, max(delivered, inflight))


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
