"""Analytics from the store: exact figures for one business (or all) over a time range, in plain SQL.

Counts and sums are SQL aggregates over the rows of the range; LLM calls are the requests (as the
lab's ``ai_metrics`` rows were), predictions and feedback make the ``ml`` part. Percentiles are exact,
by the nearest-rank method: the p-th percentile of n response times is the value at rank
``ceil(p / 100 * n)`` in ascending order, read from one ``ORDER BY`` over the range's durations
(streamed, nothing held but the three values). Averages and rates whose denominator is 0 are
``null``; counts and sums are 0.

Length: one query per part of the answer (totals, percentiles, breakdowns, ML, series), kept together
so the answer's shape reads in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .dialect import PLACEHOLDER, Connection, is_integer_overflow
from .schema import TABLE

__all__ = ["BUCKETS", "PERCENTILES", "Slice", "analytics", "nearest_rank"]

#: ``group_by`` values and their width in nanoseconds (UTC hours and days from the Unix epoch).
BUCKETS = {"hour": 3_600 * 10**9, "day": 86_400 * 10**9}
PERCENTILES = (50, 95, 99)
_TOKENS = ("total_tokens", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class Slice:
    """Which rows: one business (``None``: all), from ``start_ns`` (inclusive) to ``end_ns``
    (exclusive), either open."""

    business_id: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None


def _where(part: Slice, kind: str | None) -> tuple[str, tuple[Any, ...]]:
    p = PLACEHOLDER
    conditions: list[str] = []
    parameters: list[Any] = []
    for condition, value in (
        (f"kind = {p}", kind),
        (f"business_id = {p}", part.business_id),
        (f"time_unix_ns >= {p}", part.start_ns),
        (f"time_unix_ns < {p}", part.end_ns),
    ):
        if value is not None:
            conditions.append(condition)
            parameters.append(value)
    return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), tuple(parameters)


def _count(flag: str) -> str:
    return f"SUM(CASE WHEN {flag} THEN 1 ELSE 0 END)"


def _failed() -> str:
    return "SUM(CASE WHEN success THEN 0 ELSE 1 END)"


def _sum(column: str, wide: bool) -> str:
    """``SUM`` of an integer column; ``wide``: as doubles (a sum beyond 64 bits, approximate)."""
    return f"SUM(CAST({column} AS DOUBLE PRECISION))" if wide else f"SUM({column})"


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _tokens(value: Any) -> int | float:
    """A sum of token counts; beyond 64 bits (counts near their bound) a double, as JSON carries it."""
    whole = _int(value)
    return whole if whole < 2**63 else float(value)


def _float(value: Any) -> float:
    return 0.0 if value is None else float(value)


def _ratio(part: float, whole: float) -> float | None:
    return None if not whole else part / whole


def nearest_rank(p: float, n: int) -> int:
    """The 1-based rank of the ``p``-th percentile of ``n`` sorted values (nearest-rank method)."""
    return max(1, math.ceil(p / 100 * n))


def _percentiles(connection: Connection, where: str, parameters: Sequence[Any], n: int) -> dict[str, Any]:
    found: dict[str, Any] = {f"p{p}": None for p in PERCENTILES}
    if n == 0:
        return found
    wanted: dict[int, list[str]] = {}
    for p in PERCENTILES:
        wanted.setdefault(nearest_rank(p, n), []).append(f"p{p}")
    last = max(wanted)
    cursor = connection.execute(
        f"SELECT duration_ms FROM {TABLE}{where} ORDER BY duration_ms", tuple(parameters)
    )
    rank = 0
    while rank < last:
        rows = cursor.fetchmany(4096)
        if not rows:
            break
        for (value,) in rows:
            rank += 1
            for name in wanted.get(rank, ()):
                found[name] = value
            if rank >= last:
                break
    cursor.close()
    return found


def _requests(connection: Connection, part: Slice, wide: bool) -> dict[str, Any]:
    where, parameters = _where(part, "llm_call")
    unpriced = _count("cost_source = 'unpriced'")
    row = connection.execute(
        f"SELECT COUNT(*), {_count('success')}, AVG(duration_ms), "
        f"{', '.join(_sum(column, wide) for column in _TOKENS)}, SUM(cost_usd), "
        f"{unpriced}, {_count('appointment_requested')}, "
        f"{_count('appointment_booked')}, {_count('human_handoff')}, "
        "AVG(user_satisfaction), COUNT(user_satisfaction), AVG(success_rate), COUNT(success_rate) "
        f"FROM {TABLE}{where}",
        parameters,
    ).fetchone()
    total, successful = _int(row[0]), _int(row[1])
    tokens = dict(
        zip(("total", "input", "output", "cached_input", "reasoning"), map(_tokens, row[3:8]), strict=True)
    )
    requested, booked, handoffs = _int(row[10]), _int(row[11]), _int(row[12])
    return {
        "requests": {
            "total": total,
            "successful": successful,
            "failed": total - successful,
            "success_rate": _ratio(successful, total),
        },
        "response_time_ms": {"avg": row[2], **_percentiles(connection, where, parameters, total)},
        "tokens": tokens,
        "cost_usd": {"total": _float(row[8]), "unpriced_calls": _int(row[9]), "by_model": {}},
        "appointments": {
            "requested": requested,
            "booked": booked,
            "conversion_rate": _ratio(booked, requested),
        },
        "handoffs": {"count": handoffs, "rate": _ratio(handoffs, total)},
        "user_satisfaction": {"avg": row[13], "count": _int(row[14])},
        "reported_success_rate": {"avg": row[15], "count": _int(row[16])},
    }


def _grouped(
    connection: Connection, part: Slice, kind: str, keys: tuple[str, ...], values: str
) -> Iterable[tuple[Any, ...]]:
    """``values`` per distinct ``keys`` (expressions) among ``kind``'s rows of ``part``."""
    where, parameters = _where(part, kind)
    groups = ", ".join(str(i + 1) for i in range(len(keys)))
    return connection.execute(
        f"SELECT {', '.join(keys)}, {values} FROM {TABLE}{where} GROUP BY {groups} ORDER BY {groups}",
        parameters,
    ).fetchall()


def _breakdowns(connection: Connection, part: Slice, wide: bool) -> dict[str, Any]:
    by_intent = {
        intent: {"requests": _int(n), "failed": _int(failed), "cost_usd": _float(cost)}
        for intent, n, failed, cost in _grouped(
            connection,
            part,
            "llm_call",
            ("COALESCE(intent, 'unknown')",),
            f"COUNT(*), {_failed()}, SUM(cost_usd)",
        )
    }
    by_model = {
        model: {
            "requests": _int(n),
            "failed": _int(failed),
            "avg_response_time_ms": avg,
            "tokens": _tokens(tokens),
            "cost_usd": _float(cost),
        }
        for model, n, failed, avg, tokens, cost in _grouped(
            connection,
            part,
            "llm_call",
            ("model",),
            f"COUNT(*), {_failed()}, AVG(duration_ms), {_sum('total_tokens', wide)}, SUM(cost_usd)",
        )
    }
    by_response_type = {
        response_type: {"requests": _int(n)}
        for response_type, n in _grouped(
            connection, part, "llm_call", ("COALESCE(response_type, 'unknown')",), "COUNT(*)"
        )
    }
    return {"by_intent": by_intent, "by_model": by_model, "by_response_type": by_response_type}


def _ml(connection: Connection, part: Slice) -> dict[str, Any]:
    predictions: dict[str, dict[str, dict[str, Any]]] = {}
    for model, version, result, n, failed, duration in _grouped(
        connection,
        part,
        "prediction",
        ("model", "model_version", "COALESCE(prediction_result, 'none')"),
        f"COUNT(*), {_failed()}, SUM(duration_ms)",
    ):
        entry = predictions.setdefault(model, {}).setdefault(
            version, {"total": 0, "failed": 0, "avg_duration_ms": 0.0, "by_result": {}}
        )
        entry["total"] += _int(n)
        entry["failed"] += _int(failed)
        entry["avg_duration_ms"] += _float(duration)  # a sum until divided below
        entry["by_result"][result] = _int(n)
    for versions in predictions.values():
        for entry in versions.values():
            entry["avg_duration_ms"] = _ratio(entry["avg_duration_ms"], entry["total"])
    accuracy: dict[str, dict[str, dict[str, Any]]] = {}
    for model, version, n, correct in _grouped(
        connection, part, "feedback", ("model", "model_version"), f"COUNT(*), {_count('feedback_correct')}"
    ):
        accuracy.setdefault(model, {})[version] = {
            "feedback": _int(n),
            "correct": _int(correct),
            "accuracy": _ratio(_int(correct), _int(n)),
        }
    return {"predictions": predictions, "accuracy": accuracy}


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).isoformat().replace("+00:00", "Z")


def _series(connection: Connection, part: Slice, group_by: str, wide: bool) -> list[dict[str, Any]]:
    """The same totals per UTC hour or day (buckets with events only), oldest first."""
    width = BUCKETS[group_by]
    where, parameters = _where(part, None)
    rows = connection.execute(
        f"SELECT time_unix_ns / {PLACEHOLDER}, kind, COUNT(*), {_count('success')}, AVG(duration_ms), "
        f"{_sum('total_tokens', wide)}, SUM(cost_usd), {_count('appointment_requested')}, "
        f"{_count('appointment_booked')}, {_count('human_handoff')} "
        f"FROM {TABLE}{where} GROUP BY 1, 2 ORDER BY 1, 2",
        (width, *parameters),
    ).fetchall()
    buckets: dict[int, dict[str, Any]] = {}
    for bucket, kind, n, ok, avg, tokens, cost, requested, booked, handoffs in rows:
        entry = buckets.setdefault(
            int(bucket),
            {
                "start": _iso(int(bucket) * width),
                "requests": {"total": 0, "successful": 0, "failed": 0},
                "response_time_ms": {"avg": None},
                "tokens": 0,
                "cost_usd": 0.0,
                "appointments": {"requested": 0, "booked": 0},
                "handoffs": 0,
                "predictions": 0,
                "feedback": 0,
            },
        )
        if kind == "llm_call":
            entry["requests"] = {"total": _int(n), "successful": _int(ok), "failed": _int(n) - _int(ok)}
            entry["response_time_ms"] = {"avg": avg}
            entry["tokens"] = _tokens(tokens)
            entry["cost_usd"] = _float(cost)
            entry["appointments"] = {"requested": _int(requested), "booked": _int(booked)}
            entry["handoffs"] = _int(handoffs)
        elif kind == "prediction":
            entry["predictions"] = _int(n)
        else:
            entry["feedback"] = _int(n)
    return list(buckets.values())


def _events(connection: Connection, part: Slice) -> dict[str, int]:
    counts = dict.fromkeys(("llm_call", "prediction", "feedback"), 0)
    where, parameters = _where(part, None)
    for kind, n in connection.execute(
        f"SELECT kind, COUNT(*) FROM {TABLE}{where} GROUP BY kind", parameters
    ).fetchall():
        counts[kind] = _int(n)
    return counts


def analytics(connection: Connection, part: Slice, group_by: str | None = None) -> dict[str, Any]:
    """Every figure of ``part`` (the caller holds one read snapshot across these queries)."""
    try:
        return _analytics(connection, part, group_by, wide=False)
    except Exception as exc:
        if not is_integer_overflow(exc):
            raise
        return _analytics(connection, part, group_by, wide=True)


def _analytics(connection: Connection, part: Slice, group_by: str | None, *, wide: bool) -> dict[str, Any]:
    figures = _requests(connection, part, wide)
    breakdowns = _breakdowns(connection, part, wide)
    figures["cost_usd"]["by_model"] = {
        model: entry["cost_usd"] for model, entry in breakdowns["by_model"].items()
    }
    result: dict[str, Any] = {"events": _events(connection, part), **figures, **breakdowns}
    result["ml"] = _ml(connection, part)
    if group_by is not None:
        result["group_by"] = group_by
        result["series"] = _series(connection, part, group_by, wide)
    return result
