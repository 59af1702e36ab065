"""Reads records after the committed cursor (the export side's, or the shard merger's); saving the
cursor deletes the segments it has passed. A torn frame at the end of the newest segment may be a
write in progress: it is waited for, then skipped and counted as corrupt."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .cursor import Cursor, Position, read_cursor, write_cursor
from .directory import lock, segment_name, segment_numbers
from .frame import parse_frames

__all__ = ["SpoolReader"]

_READ_CHUNK = 1 << 20


class SpoolReader:
    """Reads records after the committed cursor; commits advance it and delete consumed segments."""

    def __init__(self, directory: Path, *, stale_tail_seconds: float = 2.0):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # events and sockets: owner only
        self.directory = directory
        self._lock_fd = lock(directory, "reader.lock")
        self.cursor = self._load_cursor()
        self._pos = self.cursor.committed
        self._need = 0
        self._stale_tail_seconds = stale_tail_seconds
        self._tail_since: float | None = None
        #: Records skipped because their frame was corrupt (counted by the caller as drops).
        self.corrupt_bytes = 0

    def _load_cursor(self) -> Cursor:
        found = read_cursor(self.directory)
        if found is not None:
            return found
        existing = segment_numbers(self.directory)
        return Cursor.at(Position(existing[0] if existing else 1, 0))

    def read(self, max_records: int) -> tuple[list[bytes], list[Position]]:
        """Up to ``max_records`` payloads after the read position, with the position after each."""
        out: list[bytes] = []
        ends: list[Position] = []
        while len(out) < max_records:
            path = self.directory / segment_name(self._pos.segment)
            later = self._later()
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = -1
            if self._pos.offset >= size:
                if later is None or (size >= 0 and os.stat(path).st_size > self._pos.offset):
                    break  # caught up with the writer (or it appended meanwhile: read again)
                self._pos = Position(later, 0)
                continue
            available = size - self._pos.offset
            with open(path, "rb") as handle:
                handle.seek(self._pos.offset)
                data = handle.read(min(available, max(_READ_CHUNK, self._need)))
            consumed, need = parse_frames(data, out, ends, max_records, self._pos)
            self._pos = Position(self._pos.segment, self._pos.offset + consumed)
            self._need = 0
            if need == 0:
                self._tail_since = None
                continue
            if need > 0 and consumed + need <= available:
                self._need = need  # the frame goes on past this chunk: read it whole next time
                continue
            # A torn or corrupt frame. A segment is final once a later one exists (the writer
            # never goes back); the active one may just be mid-write, so give it time.
            now = time.monotonic()
            if self._tail_since is None:
                self._tail_since = now
            if later is None and now - self._tail_since < self._stale_tail_seconds:
                break
            self.corrupt_bytes += size - self._pos.offset
            self._pos = Position(later, 0) if later is not None else Position(self._pos.segment, size)
            self._tail_since = None
        return out, ends

    def _later(self) -> int | None:
        for number in segment_numbers(self.directory):
            if number > self._pos.segment:
                return number
        return None

    def save(self, cursor: Cursor) -> None:
        """Persist ``cursor`` atomically; delete segments wholly before its committed position."""
        write_cursor(self.directory, cursor)
        old = self.cursor.committed
        self.cursor = cursor
        if cursor.committed.segment > old.segment:
            for number in segment_numbers(self.directory):
                if number >= cursor.committed.segment:
                    break
                (self.directory / segment_name(number)).unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._lock_fd)
