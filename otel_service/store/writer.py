"""The export process's writer: each batch's rows in one transaction, idempotent by event ID, and the
retention sweeps. The connection is opened on first use (and again after a failure), so a store
that cannot be opened or written now (a full disk, a path that cannot be created) fails only its own
writes: the caller counts and reports them, and export carries on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .dialect import (
    ERRORS,
    Connection,
    connect_writer,
    has_table,
    schema_version,
    set_schema_version,
    transaction,
)
from .retention import Retention, Swept, add_count, sweep
from .schema import (
    COUNTED_OUTCOMES,
    INSERTS,
    SCHEMA,
    TABLE,
    VERSION,
    DerivedValues,
    StoredEnvelope,
    row_of,
)

__all__ = ["EventStore", "StoreError", "status_of"]


def status_of(path: Path, counts: Mapping[str, int]) -> dict[str, Any]:
    """A store's state for ``/health/detailed``: where it is, its size on disk (with its log), its
    rows, from its row ``counts``."""
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += os.stat(f"{path}{suffix}").st_size
    return {
        "path": str(path),
        "bytes": size,
        "rows": counts["written"] - counts["expired"] - counts["evicted_for_size"],
        "rows_by_outcome": dict(counts),
    }


class StoreError(OSError):
    """The store cannot be written or read now (full disk, unwritable path, damaged file...)."""


class EventStore:
    """One SQLite file of event rows, written by the export process (from its worker thread)."""

    def __init__(self, path: Path, retention: Retention, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        #: The store's own counts (``store_counts``), as of its last commit.
        self._counts = dict.fromkeys(COUNTED_OUTCOMES, 0)

    def _open(self) -> Connection:
        if self._connection is None:
            connection = connect_writer(self.path)
            try:
                with transaction(connection):
                    made = schema_version(connection)
                    if made != VERSION and has_table(connection, TABLE):
                        raise StoreError(
                            f"{self.path} holds a store of schema {made} (this version writes schema "
                            f"{VERSION}, from an unreleased version before it): move it away"
                        )
                    for statement in SCHEMA:
                        connection.execute(statement)
                    set_schema_version(connection, VERSION)
                counts = connection.execute("SELECT outcome, row_count FROM store_counts").fetchall()
            except BaseException:
                connection.close()
                raise
            self._counts.update({str(outcome): int(rows) for outcome, rows in counts})
            self._connection = connection
        return self._connection

    def _failed(self, exc: BaseException) -> StoreError:
        """Let go of the connection (the next write opens it again) and say what went wrong."""
        if self._connection is not None:
            with contextlib.suppress(*ERRORS):
                self._connection.close()
            self._connection = None
        return StoreError(f"{self.path}: {exc}")

    def write(self, envelopes: Sequence[StoredEnvelope], derived: Sequence[DerivedValues | None]) -> int:
        """Store one batch in one transaction; returns the rows it added (a row already there, from a
        record replayed after a crash, is left as it is). Raises ``StoreError``, storing nothing."""
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for envelope, values in zip(envelopes, derived, strict=True):
            kind, row = row_of(envelope, values)
            rows.setdefault(kind, []).append(row)
        with self._lock:
            try:
                connection = self._open()
                with transaction(connection):
                    written = 0
                    for kind, of_kind in rows.items():
                        written += max(0, connection.executemany(INSERTS[kind], of_kind).rowcount)
                    if written:
                        add_count(connection, "written", written)
            except ERRORS as exc:
                raise self._failed(exc) from exc
            self._counts["written"] += written
            return written

    def sweep(self) -> Swept:
        """One chunk of retention (see ``retention.sweep``). Raises ``StoreError``."""
        with self._lock:
            try:
                swept = sweep(self._open(), self.retention, self._clock())
            except ERRORS as exc:
                raise self._failed(exc) from exc
            self._counts["expired"] += swept.expired
            self._counts["evicted_for_size"] += swept.evicted_for_size
            return swept

    def counts(self) -> dict[str, int]:
        """Rows written, expired and evicted for size, ever (kept in the store itself: exact across
        restarts; they start again at 0 only with a new file)."""
        return dict(self._counts)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
