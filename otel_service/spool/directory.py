"""A spool directory: its segment files, its locks, and what it holds (read-only queries).

Segments are named by a 16-digit number and ``.seg``; the writer creates them in increasing order and
never goes back; the reader deletes those the committed cursor has passed. ``writer.lock`` and
``reader.lock`` (flock) keep one writer and one reader per directory.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .cursor import Position, read_cursor
from .frame import HEADER, MAX_RECORD_BYTES, parse_frames

__all__ = [
    "SpoolLocked",
    "SpoolStats",
    "count_records",
    "end_position",
    "first_pending",
    "lock",
    "pending_segments",
    "records_after",
    "segment_name",
    "segment_numbers",
    "stats",
    "undelivered",
    "usage",
    "writer_active",
]

SUFFIX = ".seg"


class SpoolLocked(RuntimeError):
    """Another process already writes (or reads) this spool."""


@dataclass(frozen=True, slots=True)
class SpoolStats:
    segments: int
    bytes: int


def segment_name(number: int) -> str:
    return f"{number:016d}{SUFFIX}"


def segment_numbers(directory: Path) -> list[int]:
    numbers = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and entry.name[: -len(SUFFIX)].isdigit():
                    numbers.append(int(entry.name[: -len(SUFFIX)]))
    except FileNotFoundError:  # a shard whose process has not started yet
        return []
    return sorted(numbers)


def lock(directory: Path, name: str) -> int:
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
        fd = lock(directory, "writer.lock")
    except SpoolLocked:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def end_position(directory: Path) -> Position:
    """Where the next record will be written (the end of the newest segment)."""
    numbers = segment_numbers(directory)
    if not numbers:
        return Position(0, 0)
    try:
        return Position(numbers[-1], os.stat(directory / segment_name(numbers[-1])).st_size)
    except FileNotFoundError:
        return Position(numbers[-1], 0)


def pending_segments(directory: Path, start: Position) -> Iterator[tuple[int, int]]:
    """Each segment at or after ``start``, with the offset to read it from."""
    for number in segment_numbers(directory):
        if number >= start.segment:
            yield number, start.offset if number == start.segment else 0


def count_records(directory: Path, start: Position) -> tuple[int, Position]:
    """How many whole records lie between ``start`` and the end of the spool, and where counting
    stopped (before a partial frame): callers count incrementally from there."""
    count = 0
    position = start
    for number, offset in pending_segments(directory, start):
        try:
            with open(directory / segment_name(number), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                while offset + HEADER.size <= size:
                    handle.seek(offset)
                    length, _ = HEADER.unpack(handle.read(HEADER.size))
                    if length > MAX_RECORD_BYTES or offset + HEADER.size + length > size:
                        break
                    offset += HEADER.size + length
                    count += 1
        except FileNotFoundError:
            continue
        position = Position(number, offset)
    return count, position


def records_after(directory: Path, start: Position) -> list[bytes]:
    """The payloads of the whole, valid records from ``start`` to the end of the spool (read without
    the reader's lock: the export side may be reading them too). Segments already deleted are
    skipped."""
    found: list[bytes] = []
    for number, offset in pending_segments(directory, start):
        try:
            data = (directory / segment_name(number)).read_bytes()[offset:]
        except FileNotFoundError:
            continue
        parse_frames(data, found, [], len(data), Position(number, offset))
    return found


def first_pending(directory: Path) -> bytes | None:
    """The first record not delivered yet (its payload), if any is whole on disk."""
    cursor = read_cursor(directory)
    for number, offset in pending_segments(directory, cursor.delivered if cursor else Position(0, 0)):
        try:
            with open(directory / segment_name(number), "rb") as handle:
                handle.seek(offset)
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size:
                    continue
                length, crc = HEADER.unpack(header)
                if length > MAX_RECORD_BYTES:
                    return None
                payload = handle.read(length)
        except FileNotFoundError:
            continue
        return payload if len(payload) == length and zlib.crc32(payload) == crc else None
    return None


def _after(directory: Path, *starts: Position) -> list[SpoolStats]:
    """For each of ``starts``, the segments and bytes the spool holds from it on (one directory pass)."""
    found = [[0, 0] for _ in starts]
    first = min(starts)
    for number in segment_numbers(directory):
        if number < first.segment:
            continue
        try:
            size = os.stat(directory / segment_name(number)).st_size
        except FileNotFoundError:
            continue
        for start, tally in zip(starts, found, strict=True):
            if number < start.segment:
                continue
            pending = size - (start.offset if number == start.segment else 0)
            if pending > 0:
                tally[0] += 1
                tally[1] += pending
    return [SpoolStats(count, total) for count, total in found]


def stats(directory: Path) -> SpoolStats:
    """What the spool holds on disk: bytes after the committed cursor (not yet delivered, or delivered
    but not yet covered by a metric push)."""
    return usage(directory)[0]


def undelivered(directory: Path) -> int:
    """Bytes whose spans and logs are not delivered yet: after the cursor's ``delivered`` position."""
    return usage(directory)[1]


def usage(directory: Path) -> tuple[SpoolStats, int]:
    """``stats`` and ``undelivered`` together, from one read of the cursor and one directory pass."""
    found = read_cursor(directory)
    held, pending = _after(
        directory, *((found.committed, found.delivered) if found else (Position(0, 0),) * 2)
    )
    return held, pending.bytes
