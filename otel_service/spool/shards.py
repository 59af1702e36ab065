"""Spool shards: with several intake processes, each one but the first appends to a shard of its own
(``<spool>/intake-N``), and the first moves what the shards hold into the main spool, which the export
side reads. An event is owned once it is in a shard, as it is once in the main spool.

Copying is exactly once: before a batch is appended to the main spool, the shard's cursor records the
batch's end (``inflight``) and ``copying`` where in the main spool it lands; the cursor moves past it
after. After a crash in between, the next start reads the main spool from there and copies again only
the records it does not find (byte for byte: each holds its own span ID). Only if that part of the main
spool is gone already (the export side consumed it) are the records copied again and counted as
possible duplicates.

A shard also holds its process's published counters (``stats.json``), which the first process adds to
its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from .cursor import Cursor, Position
from .directory import records_after, segment_numbers
from .reader import SpoolReader
from .writer import SpoolWriter

__all__ = ["ShardMerger", "forget_published", "publish", "read_published", "shard_dir", "shard_dirs"]

_PREFIX = "intake-"
_PUBLISHED = "stats.json"
_COPYING = "copying"


def shard_dir(spool_dir: Path, index: int) -> Path:
    """The spool of intake process ``index`` (1, 2, ...; process 0 writes the main spool)."""
    return spool_dir / f"{_PREFIX}{index}"


def shard_dirs(spool_dir: Path) -> list[Path]:
    """Every shard present, in index order."""
    found = []
    if spool_dir.is_dir():
        for entry in spool_dir.iterdir():
            index = entry.name.removeprefix(_PREFIX)
            if entry.name.startswith(_PREFIX) and index.isdigit() and entry.is_dir():
                found.append((int(index), entry))
    return [path for _, path in sorted(found)]


def publish(directory: Path, data: dict[str, Any]) -> None:
    """Replace ``directory``'s published counters atomically."""
    tmp = directory / (_PUBLISHED + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, directory / _PUBLISHED)


def read_published(directory: Path) -> dict[str, Any] | None:
    """What ``publish`` last wrote there (None if nothing, or unreadable)."""
    try:
        data = orjson.loads((directory / _PUBLISHED).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def forget_published(directory: Path) -> None:
    (directory / _PUBLISHED).unlink(missing_ok=True)


class ShardMerger:
    """Copies records from shards into the main spool's writer (on the writer's thread)."""

    def __init__(self, writer: SpoolWriter, shards: Sequence[Path]) -> None:
        self._writer = writer
        self._shards = shards
        self._readers: dict[Path, SpoolReader] = {}
        #: Per shard, the end of a copy that was under way when the previous process stopped, and
        #: what the main spool holds from where it was to land (None: not known any more).
        self._suspect: dict[Path, tuple[Position, set[bytes] | None]] = {}
        self._pending: list[tuple[SpoolReader, Position]] = []
        #: Records copied; after a crash, found already copied (skipped), and copied again without
        #: knowing (possible duplicates downstream).
        self.copied = 0
        self.skipped = 0
        self.duplicates = 0
        #: Bytes of torn or corrupt frames skipped in shards (a process killed mid-write).
        self.corrupt_bytes = 0

    def _open(self) -> Iterator[SpoolReader]:
        for directory in self._shards:
            reader = self._readers.get(directory)
            if reader is None:
                reader = self._readers[directory] = SpoolReader(directory)
                if reader.cursor.inflight > reader.cursor.committed:
                    self._suspect[directory] = (reader.cursor.inflight, self._landed(directory))
            yield reader

    def _landed(self, shard: Path) -> set[bytes] | None:
        """The main spool's records from where the shard's interrupted copy was to land."""
        try:
            segment, offset = map(int, (shard / _COPYING).read_text().split())
        except (FileNotFoundError, ValueError):
            return None
        main = self._writer.directory
        if segment not in segment_numbers(main):
            return None  # consumed and deleted already: what was copied cannot be told any more
        return set(records_after(main, Position(segment, offset)))

    def copy(self, max_records: int = 4096) -> int:
        """Append what the shards hold (up to ``max_records`` from each) to the main spool; ``commit``
        once that is as durable as the fsync policy asks. Returns the records copied."""
        total = 0
        for reader in self._open():
            payloads, ends = reader.read(max_records)
            if reader.corrupt_bytes:
                self.corrupt_bytes += reader.corrupt_bytes
                reader.corrupt_bytes = 0
            if not payloads:
                continue
            suspect = self._suspect.get(reader.directory)
            if suspect is not None:
                payloads = self._not_copied(payloads, ends, *suspect)
                if ends[-1] >= suspect[0]:
                    del self._suspect[reader.directory]
            committed = reader.cursor.committed
            _save_copying(reader.directory, self._writer.end)
            reader.save(Cursor(committed, committed, ends[-1]))
            try:
                if payloads:
                    self._writer.append(payloads)
            except OSError:  # read again from the cursor next time: nothing of this batch is copied
                reader.save(Cursor.at(committed))
                reader.close()
                del self._readers[reader.directory]
                raise
            self._pending.append((reader, ends[-1]))
            total += len(payloads)
        self.copied += total
        return total

    def _not_copied(
        self, payloads: list[bytes], ends: list[Position], suspect: Position, landed: set[bytes] | None
    ) -> list[bytes]:
        """``payloads`` but those the interrupted copy (up to ``suspect``) put in the main spool."""
        kept = []
        for payload, end in zip(payloads, ends, strict=True):
            if end > suspect:
                kept.append(payload)
            elif landed is None:
                self.duplicates += 1
                kept.append(payload)
            elif payload in landed:
                self.skipped += 1
            else:
                kept.append(payload)
        return kept

    def copied_to(self, shard: Path) -> Position:
        """How far ``shard`` has been copied (and committed) into the main spool."""
        reader = self._readers.get(shard)
        return Position(0, 0) if reader is None else reader.cursor.committed

    def commit(self) -> None:
        """Move the shards' cursors past what ``copy`` appended (deleting copied segments)."""
        for reader, end in self._pending:
            reader.save(Cursor.at(end))
        self._pending.clear()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _save_copying(shard: Path, position: Position) -> None:
    tmp = shard / (_COPYING + ".tmp")
    tmp.write_text(f"{position.segment} {position.offset}")
    os.replace(tmp, shard / _COPYING)
