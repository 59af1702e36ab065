"""What is SQLite's own, in one place: connecting (WAL and the pragmas), the placeholder, the
database's size on disk and giving freed space back, and which errors mean what.

Everything else in ``store`` speaks plain SQL that PostgreSQL runs as well (``INSERT ... ON CONFLICT
DO NOTHING``, row values, ``LIMIT``/``OFFSET``, ``CASE``, integer division of ``BIGINT`` s): a shared
PostgreSQL backend replaces this module, not the schema, the writer, retention or the queries.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "CREATED_AT",
    "ERRORS",
    "PLACEHOLDER",
    "Connection",
    "connect_empty",
    "connect_reader",
    "connect_writer",
    "has_table",
    "is_integer_overflow",
    "is_interrupted",
    "read_snapshot",
    "schema_version",
    "set_deadline",
    "set_schema_version",
    "size_bytes",
    "transaction",
]

Connection = sqlite3.Connection
#: The parameter placeholder of the driver (``%s`` for psycopg).
PLACEHOLDER = "?"
#: What a failed statement raises: the driver's errors (a full disk, a damaged file...) and the
#: file system's (a directory that cannot be made).
ERRORS = (sqlite3.Error, OSError)
#: RFC 3339 UTC text (microseconds, truncated) of ``time_unix_ns``, for the lab's ``created_at``.
CREATED_AT = (
    "strftime('%Y-%m-%dT%H:%M:%S', time_unix_ns / 1000000000, 'unixepoch')"
    " || printf('.%06dZ', time_unix_ns / 1000 % 1000000)"
)
#: Pages the write-ahead log grows to before it is copied into the database: a page the random-key
#: indexes (trace and correlation IDs) touch again and again is copied once per checkpoint (a tenth
#: of the default's CPU per event here, measured), at up to 40 MB of log on disk.
_WAL_PAGES = 10_000
#: The write-ahead log is truncated back to this after a checkpoint.
_WAL_LIMIT_BYTES = 16 << 20
#: The writer's page cache (KiB): the primary key index takes random inserts.
_CACHE_KIB = 16 << 10


def connect_writer(path: Path) -> sqlite3.Connection:
    """The store process's connection: creates the file (the owner's only, as its log files will be:
    events carry user data) and its directory, WAL.

    No auto-vacuum: its pointer map costs a third of the store's CPU per event (measured: 59 -> 43 µs
    at 300,000 rows). Pages that retention frees are reused by the next rows instead, so the file
    keeps its largest size and the size bound applies to the pages in use (``size_bytes``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # In WAL mode, NORMAL loses no committed transaction when the process dies (a power loss may
        # take the last ones back, as the spool's default fsync policy does).
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
        connection.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
        connection.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def connect_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only connection (WAL lets it read while the export process writes); ``None`` while the
    file does not exist (nothing stored yet)."""
    if not path.exists():
        return None
    uri = path.resolve().as_uri() + "?mode=ro"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    connection.execute("PRAGMA query_only = ON")
    return connection


def size_bytes(connection: sqlite3.Connection) -> int:
    """The size of the database's pages in use (free pages, reused by the next rows, aside; the
    write-ahead log aside)."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    return (int(pages) - int(free)) * int(page_size)


def is_interrupted(error: Exception) -> bool:
    """A query stopped by its deadline (the progress handler)."""
    return isinstance(error, sqlite3.OperationalError) and "interrupted" in str(error)


def is_integer_overflow(error: Exception) -> bool:
    """An integer ``SUM`` beyond 64 bits (token counts near the int64 bound)."""
    return isinstance(error, sqlite3.OperationalError) and "integer overflow" in str(error)


def set_deadline(connection: sqlite3.Connection, deadline: float, clock: Callable[[], float]) -> None:
    """Stop any statement of ``connection`` still running at ``deadline`` (a ``clock()`` value): it
    raises an error ``is_interrupted`` recognises."""
    connection.set_progress_handler(lambda: 1 if clock() > deadline else 0, 10_000)


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed at the end of the block, rolled back if it raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def connect_empty() -> sqlite3.Connection:
    """An empty in-memory database (what a store that does not exist yet answers)."""
    return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)


def schema_version(connection: sqlite3.Connection) -> int:
    """The version of the schema the file was made with (0: none recorded)."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def set_schema_version(connection: sqlite3.Connection, version: int) -> None:
    connection.execute(f"PRAGMA user_version = {int(version)}")


def has_table(connection: sqlite3.Connection, name: str) -> bool:
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


@contextmanager
def read_snapshot(connection: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every query in the block sees the same committed state (WAL), however
    the writer goes on meanwhile."""
    connection.execute("BEGIN")
    try:
        yield
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
