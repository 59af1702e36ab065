"""Retention: rows older than the age bound go, and beyond the size bound the oldest go, a bounded
chunk at a time, each chunk in one transaction with its count (``store_counts``), so a crash never
leaves a deletion uncounted or a count without its deletion.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialect import PLACEHOLDER, Connection, size_bytes, transaction
from .schema import TABLE

__all__ = ["Retention", "Swept", "add_count", "sweep"]


@dataclass(frozen=True, slots=True)
class Retention:
    """The bounds: ``max_age_ns`` (0: none) and ``max_bytes`` (0: none); ``chunk_rows``: most rows one
    sweep deletes for each bound."""

    max_age_ns: int
    max_bytes: int
    chunk_rows: int = 1000


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep deleted, and whether the store is within its bounds now (else sweep again)."""

    expired: int
    evicted_for_size: int
    done: bool


def add_count(connection: Connection, outcome: str, rows: int) -> None:
    """Add ``rows`` to ``outcome``'s count (inside the caller's transaction)."""
    p = PLACEHOLDER
    connection.execute(
        f"UPDATE store_counts SET row_count = row_count + {p} WHERE outcome = {p}", (rows, outcome)
    )


def _delete_oldest(connection: Connection, limit: int, outcome: str, before_ns: int | None) -> int:
    """Delete the ``limit`` oldest rows (of those before ``before_ns``), counted as ``outcome``."""
    p = PLACEHOLDER
    where = f"WHERE time_unix_ns < {p} " if before_ns is not None else ""
    parameters = (before_ns, limit) if before_ns is not None else (limit,)
    with transaction(connection):
        deleted = connection.execute(
            f"DELETE FROM {TABLE} WHERE (received_minute, trace_id, span_id) IN (SELECT received_minute, "
            f"trace_id, span_id FROM {TABLE} {where}ORDER BY time_unix_ns LIMIT {p})",
            parameters,
        ).rowcount
        if deleted > 0:
            add_count(connection, outcome, deleted)
    return max(0, deleted)


def sweep(connection: Connection, retention: Retention, now_ns: int) -> Swept:
    """One chunk of each bound's deletions."""
    chunk = retention.chunk_rows
    expired = 0
    if retention.max_age_ns:
        expired = _delete_oldest(connection, chunk, "expired", now_ns - retention.max_age_ns)
    evicted = 0
    if retention.max_bytes and size_bytes(connection) > retention.max_bytes:
        evicted = _delete_oldest(connection, chunk, "evicted_for_size", None)
    # Full chunks may leave more to do; after an eviction, the size is measured again next time.
    # An empty table over the bound (a bound below the schema's own pages) is as good as it gets.
    return Swept(expired, evicted, done=expired < chunk and evicted == 0)
