"""Reading the store for the analytics endpoints, from the first intake process: a read-only
connection per query (WAL: the export process writes meanwhile), one snapshot for all of a query's
statements, and a deadline after which the query is stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .dialect import (
    ERRORS,
    Connection,
    connect_empty,
    connect_reader,
    has_table,
    is_interrupted,
    read_snapshot,
    set_deadline,
)
from .queries import Slice, analytics
from .schema import SCHEMA, TABLE
from .writer import StoreError

__all__ = ["AnalyticsReader", "StoreTimeout"]


class StoreTimeout(StoreError):
    """A query ran past its deadline and was stopped."""


class AnalyticsReader:
    """Answers analytics queries from the store at ``path`` (its writer is the export process)."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def read(self, part: Slice, group_by: str | None = None) -> dict[str, Any]:
        """The figures of ``part`` (blocking: call it off the event loop). A store that does not exist
        yet answers zeros. Raises ``StoreTimeout`` past the deadline, ``StoreError`` if unreadable."""
        deadline = time.monotonic() + self.timeout
        try:
            connection = connect_reader(self.path)
            if connection is not None:
                try:
                    set_deadline(connection, deadline, time.monotonic)
                    with read_snapshot(connection):
                        if has_table(connection, TABLE):  # (else: created, its schema not committed yet)
                            return analytics(connection, part, group_by)
                finally:
                    connection.close()
            empty = _empty()
            try:
                return analytics(empty, part, group_by)
            finally:
                empty.close()
        except ERRORS as exc:
            if is_interrupted(exc):
                raise StoreTimeout(f"the query took longer than {self.timeout:g} s") from None
            raise StoreError(f"{self.path}: {exc}") from exc


def _empty() -> Connection:
    """A store with no rows: the same queries answer zeros."""
    connection = connect_empty()
    for statement in SCHEMA:
        connection.execute(statement)
    return connection
