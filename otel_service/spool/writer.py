"""Appends framed records to the spool's newest segment (intake's side); rotates at ``SEGMENT_BYTES``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from .cursor import Position
from .directory import lock, segment_name, segment_numbers
from .frame import frames

__all__ = ["SEGMENT_BYTES", "SpoolWriter"]

SEGMENT_BYTES = 8 << 20


class SpoolWriter:
    """Appends framed records; one writer per spool directory (enforced with a lock file)."""

    def __init__(self, directory: Path, *, fsync: str = "never", segment_bytes: int = SEGMENT_BYTES):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # events and sockets: owner only
        self.directory = directory
        self._lock_fd = lock(directory, "writer.lock")
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        existing = segment_numbers(directory)
        self._number = (existing[-1] + 1) if existing else 1
        self._fd = self._open(self._number)
        self._written = 0
        self._dirty = False
        #: Held by ``sync`` (which may run in a thread) and by rotation, so a segment is never
        #: closed under an fsync.
        self._sync_lock = threading.Lock()
        #: fsync calls made; with group commit, fewer than the appends they cover.
        self.syncs = 0

    def _open(self, number: int) -> int:
        return os.open(self.directory / segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    @property
    def end(self) -> Position:
        """Where the next record goes (at the latest: an append may start a new segment first)."""
        return Position(self._number, self._written)

    def append(self, payloads: Iterable[bytes]) -> int:
        """Append records in one write; returns the bytes written. Raises ``OSError`` on failure."""
        buffer = frames(payloads)
        size = len(buffer)
        if self._written and self._written + size > self._segment_bytes:
            self._rotate()
        done = os.write(self._fd, buffer)
        if done < size:  # short write (signal, full disk): finish it or raise
            view = memoryview(buffer)[done:]
            while view:
                view = view[os.write(self._fd, view) :]
        self._written += size
        self._dirty = True
        return size

    def sync(self) -> None:
        """Flush written records to stable storage. Thread-safe: the ``always`` policy's group
        commit runs it in a worker thread, the ``interval`` policy on a timer."""
        with self._sync_lock:
            if self._dirty:
                self._dirty = False
                os.fsync(self._fd)
                self.syncs += 1

    def _rotate(self) -> None:
        with self._sync_lock:
            if self._fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._number += 1
            self._fd = self._open(self._number)
            self._written = 0

    def close(self) -> None:
        with self._sync_lock:
            if self._fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
        os.close(self._lock_fd)
