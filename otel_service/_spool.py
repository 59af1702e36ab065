"""The durable spool between intake and export: an append-only log of framed records on disk.

Intake appends each accepted event before answering 202; the exporter reads from a committed cursor and
commits further only once what it read has been delivered. A segment is deleted when the cursor moves
past it. Records survive a crash of either side (the page cache keeps written bytes when a process dies;
``fsync="always"`` also survives a power loss).

Frame: 4-byte little-endian payload length, 4-byte CRC-32 of the payload, the payload.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Position", "SpoolLocked", "SpoolReader", "SpoolStats", "SpoolWriter"]

_HEADER = struct.Struct("<II")
_SUFFIX = ".seg"
_CURSOR = "cursor"
SEGMENT_BYTES = 8 << 20
MAX_RECORD_BYTES = 16 << 20


class SpoolLocked(RuntimeError):
    """Another process already writes (or reads) this spool."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    segments: int
    bytes: int


def _segment_name(number: int) -> str:
    return f"{number:016d}{_SUFFIX}"


def _segments(directory: Path) -> list[int]:
    numbers = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(_SUFFIX) and entry.name[: -len(_SUFFIX)].isdigit():
                numbers.append(int(entry.name[: -len(_SUFFIX)]))
    return sorted(numbers)


def _lock(directory: Path, name: str) -> int:
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"{directory} is in use by another otel-service process") from None
    return fd


def read_cursor(directory: Path) -> Position | None:
    try:
        segment, offset = (directory / _CURSOR).read_text().split()
        return Position(int(segment), int(offset))
    except (FileNotFoundError, ValueError):
        return None


def stats(directory: Path) -> SpoolStats:
    """What the spool holds that is not yet delivered: bytes after the committed cursor."""
    cursor = read_cursor(directory) or Position(0, 0)
    total = 0
    count = 0
    for number in _segments(directory):
        if number < cursor.segment:
            continue
        try:
            st = os.stat(directory / _segment_name(number))
        except FileNotFoundError:
            continue
        pending = st.st_size - (cursor.offset if number == cursor.segment else 0)
        if pending <= 0:
            continue
        total += pending
        count += 1
    return SpoolStats(count, total)


class SpoolWriter:
    """Appends framed records; one writer per spool directory (enforced with a lock file)."""

    def __init__(self, directory: Path, *, fsync: str = "never", segment_bytes: int = SEGMENT_BYTES):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock_fd = _lock(directory, "writer.lock")
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        existing = _segments(directory)
        self._number = (existing[-1] + 1) if existing else 1
        self._fd = self._open(self._number)
        self._written = 0
        self._dirty = False

    def _open(self, number: int) -> int:
        return os.open(self.directory / _segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, payloads: Iterable[bytes]) -> int:
        """Append records in one write; returns the bytes written. Raises ``OSError`` on failure."""
        buffer = bytearray()
        for payload in payloads:
            buffer += _HEADER.pack(len(payload), zlib.crc32(payload))
            buffer += payload
        if self._written and self._written + len(buffer) > self._segment_bytes:
            self._rotate()
        view = memoryview(buffer)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        self._written += len(buffer)
        if self._fsync == "always":
            os.fsync(self._fd)
        else:
            self._dirty = True
        return len(buffer)

    def sync(self) -> None:
        """Flush written records to stable storage (the ``interval`` policy calls this)."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def _rotate(self) -> None:
        if self._fsync != "never":
            os.fsync(self._fd)
        os.close(self._fd)
        self._number += 1
        self._fd = self._open(self._number)
        self._written = 0

    def close(self) -> None:
        if self._fsync != "never":
            os.fsync(self._fd)
        os.close(self._fd)
        os.close(self._lock_fd)


class SpoolReader:
    """Reads records after the committed cursor; commits advance it and delete consumed segments."""

    def __init__(self, directory: Path, *, stale_tail_seconds: float = 2.0):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock_fd = _lock(directory, "reader.lock")
        self.committed = self._load_cursor()
        self._pos = self.committed
        self._stale_tail_seconds = stale_tail_seconds
        self._tail_since: float | None = None
        #: Records skipped because their frame was corrupt (counted by the caller as drops).
        self.corrupt_bytes = 0

    def _load_cursor(self) -> Position:
        found = read_cursor(self.directory)
        if found is not None:
            return found
        existing = _segments(self.directory)
        return Position(existing[0] if existing else 1, 0)

    def read(self, max_records: int) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` payloads after the read position, and the position after them."""
        out: list[bytes] = []
        while len(out) < max_records:
            path = self.directory / _segment_name(self._pos.segment)
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
            with open(path, "rb") as handle:
                handle.seek(self._pos.offset)
                data = handle.read(size - self._pos.offset)
            consumed, whole = self._parse(data, out, max_records)
            self._pos = Position(self._pos.segment, self._pos.offset + consumed)
            if whole:
                self._tail_since = None
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
        return out, self._pos

    def _later(self) -> int | None:
        for number in _segments(self.directory):
            if number > self._pos.segment:
                return number
        return None

    @staticmethod
    def _parse(data: bytes, out: list[bytes], max_records: int) -> tuple[int, bool]:
        """Append whole, valid frames of ``data`` to ``out``; (bytes consumed, stopped cleanly)."""
        offset = 0
        size = _HEADER.size
        while len(out) < max_records and offset < len(data):
            if offset + size > len(data):
                return offset, False
            length, crc = _HEADER.unpack_from(data, offset)
            end = offset + size + length
            if length > MAX_RECORD_BYTES or end > len(data):
                return offset, False
            payload = data[offset + size : end]
            if zlib.crc32(payload) != crc:
                return offset, False
            out.append(payload)
            offset = end
        return offset, True

    def rewind(self) -> None:
        """Go back to the committed cursor (after a failed delivery)."""
        self._pos = self.committed

    def commit(self, position: Position) -> None:
        """Mark everything before ``position`` delivered; delete segments wholly before it."""
        tmp = self.directory / (_CURSOR + ".tmp")
        tmp.write_text(f"{position.segment} {position.offset}\n")
        os.replace(tmp, self.directory / _CURSOR)
        self.committed = position
        for number in _segments(self.directory):
            if number >= position.segment:
                break
            (self.directory / _segment_name(number)).unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._lock_fd)
