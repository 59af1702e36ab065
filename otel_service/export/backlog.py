"""The count of accepted events whose spans and logs are not delivered yet (``otel_service.spool.items``)."""

from __future__ import annotations

import threading
from pathlib import Path

from ..spool.cursor import Position
from ..spool.directory import count_records

__all__ = ["Backlog"]


class Backlog:
    """Accepted events whose spans and logs are not delivered yet, counted incrementally: frames are
    counted only in the bytes appended since the last look."""

    def __init__(self, directory: Path, delivered: Position) -> None:
        self._directory = directory
        self._queued = 0
        self._counted_to = delivered
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            added, self._counted_to = count_records(self._directory, self._counted_to)
            self._queued += added
            return self._queued

    def delivered(self, end: Position, records: int) -> None:
        """``records`` before ``end`` were delivered: the count stays that of [delivered, counted_to)."""
        with self._lock:
            if end <= self._counted_to:
                self._queued -= records
            else:
                self._queued, self._counted_to = 0, end
