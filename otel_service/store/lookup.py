"""Finding one request's events by ID: its correlation ID or its trace ID.

The indexes by ID lead with ``received_minute`` (see ``schema``), so a lookup walks the minutes the
store holds, from the first to the last, and seeks each once: a week is 10,080 seeks, milliseconds.
The walk is a recursive common table expression, which PostgreSQL runs as well. A correlation ID that
is its event's trace ID (the rule when the app sends none) is not in the correlation index (a partial
one) but found by the primary key.
"""

from __future__ import annotations

from typing import Any

from .dialect import PLACEHOLDER, Connection
from .schema import TABLE

__all__ = ["BY", "find", "sql"]

#: What a lookup can be by.
BY = ("correlation_id", "trace_id")


def sql(by: str, columns: tuple[str, ...]) -> tuple[str, int]:
    """The lookup's statement, and how many times it takes the ID as a parameter."""
    if by not in BY:
        raise ValueError(f"a lookup is by one of {BY}, not {by!r}")
    # (The first two columns order the rows: the event's time, then its span.)
    selected = ", ".join(f"e.{column}" for column in ("time_unix_ns", "span_id", *columns))
    p = PLACEHOLDER
    found = f"SELECT {selected} FROM minutes JOIN {TABLE} e ON e.received_minute = minutes.m AND "
    if by == "trace_id":
        rows, parameters = f"{found}e.trace_id = {p}", 1
    else:  # by the trace ID it is (primary key), or else by the index of the others (partial)
        rows = (
            f"{found}e.trace_id = {p} AND e.correlation_id = e.trace_id UNION ALL "
            f"{found}e.correlation_id = {p} AND e.correlation_id <> e.trace_id"
        )
        parameters = 2
    return (
        f"""WITH RECURSIVE minutes(m) AS (
            SELECT MIN(received_minute) FROM {TABLE}
            UNION ALL
            SELECT m + 1 FROM minutes WHERE m < (SELECT MAX(received_minute) FROM {TABLE})
        )
        SELECT * FROM ({rows}) ORDER BY 1, 2""",
        parameters,
    )


def find(connection: Connection, by: str, value: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows whose ``by`` is ``value`` (their ``columns``), oldest first."""
    statement, times = sql(by, columns)
    rows = connection.execute(statement, (value,) * times).fetchall()
    return [dict(zip(columns, row[2:], strict=True)) for row in rows]
