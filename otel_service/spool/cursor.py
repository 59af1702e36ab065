"""The ledger: how far the export side got, as positions in the spool, saved atomically.

A ``Position`` is (segment number, byte offset). The cursor file holds four of them::

    segment files:   | 1 ............ | 2 ...................... | 3 ......... (writer appends here)
                          ^committed = min(delivered, metrics): segments wholly before it are deleted
    delivered:       spans and logs accepted by the collector up to here
    metrics:         metric contributions included in a successful push up to here
    inflight:        the end of the batch being sent when the cursor was written (>= delivered):
                     after a crash, records up to it are sent again and counted as possible duplicates
    metrics_inflight: the checkpoint of the metric push under way (>= metrics): likewise, for metrics

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
    ``metrics``: metric contributions included in a successful export; ``inflight``: the end of the
    batch being sent when the cursor was written. Everything before ``committed`` (the lesser of the
    first two) is done, and segments wholly before it are deleted."""

    delivered: Position
    metrics: Position
    inflight: Position
    #: The checkpoint of the metric push under way when the cursor was written: events up to it may
    #: have reached the collector even if the process died before recording the success.
    metrics_inflight: Position = Position(0, 0)

    @property
    def committed(self) -> Position:
        return min(self.delivered, self.metrics)

    @classmethod
    def at(cls, position: Position) -> Cursor:
        return cls(position, position, position, position)

    def dumps(self) -> str:
        positions = (self.delivered, self.metrics, self.inflight, self.metrics_inflight)
        return " ".join(f"{p.segment} {p.offset}" for p in positions)

    @classmethod
    def loads(cls, text: str) -> Cursor:
        numbers = [int(part) for part in text.split()]
        if len(numbers) == 6:  # written before metrics_inflight existed
            numbers += numbers[2:4]
        if len(numbers) != 8:
            raise ValueError(f"bad cursor {text!r}")
        delivered, metrics, inflight, pushing = (Position(numbers[k], numbers[k + 1]) for k in (0, 2, 4, 6))
        return cls(delivered, metrics, max(delivered, inflight), max(metrics, pushing))


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
