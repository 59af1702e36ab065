"""The durable spool between intake and export: an append-only log of framed records on disk.

Intake appends each accepted event before answering 202; the exporter reads from a committed cursor and
commits further only once what it read has been delivered. A segment is deleted when the cursor moves
past it. Records survive a crash of either side (the page cache keeps written bytes when a process dies;
with ``fsync="always"``, whose callers await ``sync`` before answering, also a power loss).

Frame: 4-byte little-endian payload length, 4-byte CRC-32 of the payload, the payload.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Cursor",
    "Position",
    "SpoolLocked",
    "SpoolReader",
    "SpoolStats",
    "SpoolWriter",
    "end_position",
    "first_pending",
    "stats",
    "writer_active",
]

_HEADER = struct.Struct("<II")
_SUFFIX = ".seg"
_CURSOR = "cursor"
SEGMENT_BYTES = 8 << 20
MAX_RECORD_BYTES = 16 << 20
_READ_CHUNK = 1 << 20


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
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX) and entry.name[: -len(_SUFFIX)].isdigit():
                    numbers.append(int(entry.name[: -len(_SUFFIX)]))
    except FileNotFoundError:  # a shard whose process has not started yet
        return []
    return sorted(numbers)


def _lock(directory: Path, name: str) -> int:
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"{directory} is in use by another otel-service process") from None
    return fd


def writer_active(directory: Path) -> bool:
    """Whether a process holds ``directory``'s writer lock (a ``SpoolWriter`` is open on it)."""
    try:
        fd = _lock(directory, "writer.lock")
    except SpoolLocked:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


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
        return Cursor.loads((directory / _CURSOR).read_text())
    except (FileNotFoundError, ValueError):
        return None


def end_position(directory: Path) -> Position:
    """Where the next record will be written (the end of the newest segment)."""
    numbers = _segments(directory)
    if not numbers:
        return Position(0, 0)
    try:
        return Position(numbers[-1], os.stat(directory / _segment_name(numbers[-1])).st_size)
    except FileNotFoundError:
        return Position(numbers[-1], 0)


def _pending_segments(directory: Path, start: Position) -> Iterator[tuple[int, int]]:
    """Each segment at or after ``start``, with the offset to read it from."""
    for number in _segments(directory):
        if number >= start.segment:
            yield number, start.offset if number == start.segment else 0


def count_records(directory: Path, start: Position) -> tuple[int, Position]:
    """How many whole records lie between ``start`` and the end of the spool, and where counting
    stopped (before a partial frame): callers count incrementally from there."""
    count = 0
    position = start
    for number, offset in _pending_segments(directory, start):
        try:
            with open(directory / _segment_name(number), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                while offset + _HEADER.size <= size:
                    handle.seek(offset)
                    length, _ = _HEADER.unpack(handle.read(_HEADER.size))
                    if length > MAX_RECORD_BYTES or offset + _HEADER.size + length > size:
                        break
                    offset += _HEADER.size + length
                    count += 1
        except FileNotFoundError:
            continue
        position = Position(number, offset)
    return count, position


def first_pending(directory: Path) -> bytes | None:
    """The first record after the committed cursor (its payload), if any is whole on disk."""
    cursor = read_cursor(directory)
    for number, offset in _pending_segments(directory, cursor.committed if cursor else Position(0, 0)):
        try:
            with open(directory / _segment_name(number), "rb") as handle:
                handle.seek(offset)
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    continue
                length, crc = _HEADER.unpack(header)
                if length > MAX_RECORD_BYTES:
                    return None
                payload = handle.read(length)
        except FileNotFoundError:
            continue
        return payload if len(payload) == length and zlib.crc32(payload) == crc else None
    return None


def stats(directory: Path) -> SpoolStats:
    """What the spool holds that is not yet delivered: bytes after the committed cursor."""
    found = read_cursor(directory)
    cursor = found.committed if found else Position(0, 0)
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
        #: Held by ``sync`` (which may run in a thread) and by rotation, so a segment is never
        #: closed under an fsync.
        self._sync_lock = threading.Lock()
        #: fsync calls made; with group commit, fewer than the appends they cover.
        self.syncs = 0

    def _open(self, number: int) -> int:
        return os.open(self.directory / _segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, payloads: Iterable[bytes]) -> int:
        """Append records in one write; returns the bytes written. Raises ``OSError`` on failure."""
        pack, crc32 = _HEADER.pack, zlib.crc32
        buffer = b"".join([part for p in payloads for part in (pack(len(p), crc32(p)), p)])
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


class SpoolReader:
    """Reads records after the committed cursor; commits advance it and delete consumed segments."""

    def __init__(self, directory: Path, *, stale_tail_seconds: float = 2.0):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock_fd = _lock(directory, "reader.lock")
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
        existing = _segments(self.directory)
        return Cursor.at(Position(existing[0] if existing else 1, 0))

    def read(self, max_records: int) -> tuple[list[bytes], list[Position]]:
        """Up to ``max_records`` payloads after the read position, with the position after each."""
        out: list[bytes] = []
        ends: list[Position] = []
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
            available = size - self._pos.offset
            with open(path, "rb") as handle:
                handle.seek(self._pos.offset)
                data = handle.read(min(available, max(_READ_CHUNK, self._need)))
            consumed, need = self._parse(data, out, ends, max_records, self._pos)
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
        for number in _segments(self.directory):
            if number > self._pos.segment:
                return number
        return None

    @staticmethod
    def _parse(
        data: bytes, out: list[bytes], ends: list[Position], max_records: int, base: Position
    ) -> tuple[int, int]:
        """Append whole, valid frames of ``data``; (bytes consumed, 0 if it stopped cleanly, else
        the bytes the next frame needs from where it stopped, or -1 if that frame is corrupt)."""
        offset = 0
        size = _HEADER.size
        while len(out) < max_records and offset < len(data):
            if offset + size > len(data):
                return offset, size
            length, crc = _HEADER.unpack_from(data, offset)
            if length > MAX_RECORD_BYTES:
                return offset, -1
            end = offset + size + length
            if end > len(data):
                return offset, size + length
            payload = data[offset + size : end]
            if zlib.crc32(payload) != crc:
                return offset, -1
            out.append(payload)
            ends.append(Position(base.segment, base.offset + end))
            offset = end
        return offset, 0

    def save(self, cursor: Cursor) -> None:
        """Persist ``cursor`` atomically; delete segments wholly before its committed position."""
        tmp = self.directory / (_CURSOR + ".tmp")
        tmp.write_text(cursor.dumps() + "\n")
        os.replace(tmp, self.directory / _CURSOR)
        old = self.cursor.committed
        self.cursor = cursor
        if cursor.committed.segment > old.segment:
            for number in _segments(self.directory):
                if number >= cursor.committed.segment:
                    break
                (self.directory / _segment_name(number)).unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._lock_fd)
