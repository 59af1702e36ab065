"""Finding one request's events by ID: its correlation ID or its trace ID.

The indexes by ID lead with ``received_minute`` (see ``schema``), so a lookup walks the minutes the
store holds, from the first to the last, and seeks each once: a week is 10,080 seeks, milliseconds.
The walk is a recursive common table expression, which PostgreSQL runs as well.
"""

from __future__ import annotations

from typing import Any

from .dialect import PLACEHOLDER, Connection
from .schema import TABLE

__all__ = ["BY", "find", "sql"]

#: What a lookup can be by.
BY = ("correlation_id", "trace_id")


def sql(by: str, columns: tuple[str, ...]) -> str:
    """The lookup's statement (one parameter: the ID)."""
    if by not in BY:
        raise ValueError(f"a lookup is by one of {BY}, not {by!r}")
    selected = ", ".join(f"e.{column}" for column in columns)
    return f"""WITH RECURSIVE minutes(m) AS (
            SELECT MIN(received_minute) FROM {TABLE}
            UNION ALL
            SELECT m + 1 FROM minutes WHERE m < (SELECT MAX(received_minute) FROM {TABLE})
        )
        SELECT {selected} FROM minutes
        JOIN {TABLE} e ON e.received_minute = minutes.m AND e.{by} = {PLACEHOLDER}
        ORDER BY e.time_unix_ns, e.span_id"""


def find(connection: Connection, by: str, value: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows whose ``by`` is ``value`` (their ``columns``), oldest first."""
    rows = connection.execute(sql(by, columns), (value,)).fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]
