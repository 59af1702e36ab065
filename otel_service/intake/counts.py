"""Intake counters that survive kill -9: every assignment is also written to a memory-mapped file.

The file is in the process's own spool directory (the main spool for the first intake process, its
shard for the others). A process killed at any instant loses no count, since the kernel keeps the
mapped pages; its successor, and the next run, continue from the file; the first process reads the
others' files directly when it reports, so their counts are never stale. The file format is
``prometheus_client``'s multiprocess ``MmapedDict`` (a key and a double per entry, 8-byte aligned
writes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.mmap_dict import MmapedDict

__all__ = ["COUNTS_FILE", "CountsFile", "DurableCounter", "open_counts", "read_counts"]

COUNTS_FILE = "intake.counts"

Key = tuple[str, str]


class CountsFile:
    """One process's count file, open for writing until ``close`` (later writes stay in memory)."""

    def __init__(self, path: Path) -> None:
        self._dict: MmapedDict | None = MmapedDict(str(path))  # type: ignore[no-untyped-call]

    def entries(self) -> Iterable[tuple[Any, ...]]:
        return () if self._dict is None else self._dict.read_all_values()  # type: ignore[no-untyped-call]

    def write(self, key: str, value: float) -> None:
        if self._dict is not None:
            self._dict.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._dict is not None:
            self._dict.close()  # type: ignore[no-untyped-call]
            self._dict = None


class DurableCounter(Counter[Key]):
    """A ``Counter`` whose ``counter[key] = n`` (and so ``+=``) is written through to ``file``."""

    def __init__(self, file: CountsFile, name: str, start: Counter[Key]) -> None:
        super().__init__(start)
        self.file = file
        self._name = name

    def __setitem__(self, key: Key, value: int) -> None:
        super().__setitem__(key, value)
        self.file.write(orjson.dumps([self._name, *key]).decode(), float(value))


def _parse(entries: Iterable[tuple[Any, ...]]) -> dict[str, Counter[Key]]:
    """(key, value, ...) entries as the counters they hold."""
    found: dict[str, Counter[Key]] = {"received": Counter(), "rejected": Counter()}
    for key, value, *_ in entries:
        try:
            name, first, second = orjson.loads(key)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue  # an entry from a format this version does not know
        if name in found:
            found[name][str(first), str(second)] = int(value)
    return found


def open_counts(directory: Path) -> tuple[DurableCounter, DurableCounter]:
    """The (received, rejected) counters of the intake process whose spool is ``directory``,
    continuing from what its predecessors counted."""
    file = CountsFile(directory / COUNTS_FILE)
    start = _parse(file.entries())
    return (
        DurableCounter(file, "received", start["received"]),
        DurableCounter(file, "rejected", start["rejected"]),
    )


def read_counts(directory: Path) -> tuple[Counter[Key], Counter[Key]]:
    """What the intake process whose spool is ``directory`` counted (read by another process)."""
    path = directory / COUNTS_FILE
    try:
        found = _parse(MmapedDict.read_all_values_from_file(str(path)))  # type: ignore[no-untyped-call]
    except (FileNotFoundError, RuntimeError):  # none yet, or a file this version cannot read
        return Counter(), Counter()
    return found["received"], found["rejected"]
