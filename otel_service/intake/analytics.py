"""The analytics endpoints: ``GET /analytics/{business_id}`` (the lab's URL) and ``GET /v1/analytics``.

Exact figures from the event store (``store.queries`` says how each is computed), read by the first
intake process with a read-only connection (the export process writes meanwhile), off the event loop,
at most ``CONCURRENT_QUERIES`` at a time, each stopped after ``QUERY_TIMEOUT`` seconds; the other
intake processes forward them (``status.Forwarder``). Parameters: ``business_id`` (``/v1/analytics``
only: the lab's URL names it in the path; absent: every business), ``from`` and ``to`` (RFC 3339 with
a zone, or Unix seconds; from inclusive, to exclusive; absent: everything retained), ``group_by``
(``hour`` or ``day``: a time series too). A wrong, repeated or unknown parameter is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from aiohttp import web

from ..model.errors import InvalidParameter, Unavailable
from ..store import AnalyticsReader, Slice, StoreError, StoreTimeout
from ..store.queries import BUCKETS
from .server import Routes, json_response

__all__ = [
    "ANALYTICS_PATHS",
    "ANALYTICS_SCHEMA",
    "CONCURRENT_QUERIES",
    "LAB_PATH",
    "QUERY_TIMEOUT",
    "V1_PATH",
    "Analytics",
    "analytics_paths",
    "analytics_routes",
    "parse_time",
]

LAB_PATH = "/analytics/{business_id}"
V1_PATH = "/v1/analytics"
ANALYTICS_PATHS = (LAB_PATH, V1_PATH)
#: Seconds a query may run before it is stopped (503, Retry-After): within the 10 s another intake
#: process waits for the first's answer when it forwards a request.
QUERY_TIMEOUT = 8.0
#: Queries run at once (each in a thread); more wait their turn.
CONCURRENT_QUERIES = 2
_LAB_PREFIX = LAB_PATH.partition("{")[0]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: As the event model: Unix seconds up to 10^10 (the year 2286).
_MAX_SECONDS = 10_000_000_000
_UNIX = re.compile(r"[0-9]{1,11}(\.[0-9]{1,9})?")
#: A "+hh:mm" offset whose "+" a query string turned into a space.
_SPACED_OFFSET = re.compile(r" ([0-9]{2}:[0-9]{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Analytics:
    """What the analytics endpoints read: ``reader`` (``None``: the store is off)."""

    reader: AnalyticsReader | None
    turns: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENT_QUERIES))


def parse_time(name: str, text: str) -> int:
    """``text`` (RFC 3339 with a zone, or Unix seconds) as Unix nanoseconds; ``InvalidParameter``
    naming ``name`` if it is neither."""
    if _UNIX.fullmatch(text):
        try:
            seconds = Decimal(text)
        except InvalidOperation:  # (the pattern admits only what Decimal reads)
            seconds = Decimal(-1)
        if 0 <= seconds <= _MAX_SECONDS:
            return int(seconds * 1_000_000_000)
        raise InvalidParameter(f"{name} must be at most {_MAX_SECONDS} Unix seconds", field=name)
    try:
        moment = datetime.fromisoformat(_SPACED_OFFSET.sub(r"+\1", text))
    except ValueError:
        raise InvalidParameter(
            f"{name} must be an RFC 3339 time with a zone or Unix seconds, got {text[:64]!r}", field=name
        ) from None
    if moment.tzinfo is None:
        raise InvalidParameter(f"{name} needs a time zone (Z or an offset): {text[:64]!r}", field=name)
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    if not 0 <= micros <= _MAX_SECONDS * 1_000_000:
        raise InvalidParameter(f"{name} is out of range: {text[:64]!r}", field=name)
    return micros * 1000


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    text = (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()
    return text.replace("+00:00", "Z")


def _business(text: str) -> str:
    if not 1 <= len(text) <= 256 or _CONTROL.search(text):
        raise InvalidParameter(
            "business_id must be 1..256 characters without control characters", field="business_id"
        )
    return text


def _query(request: web.BaseRequest, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one of ``allowed``."""
    found: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise InvalidParameter(
                f"unknown parameter {name[:64]!r}; known: {', '.join(allowed)}", field=name[:64]
            )
        if name in found:
            raise InvalidParameter(f"{name} is given more than once", field=name)
        found[name] = value
    return found


async def _answer(analytics: Analytics, business_id: str | None, query: dict[str, str]) -> web.Response:
    start = parse_time("from", query["from"]) if "from" in query else None
    end = parse_time("to", query["to"]) if "to" in query else None
    if start is not None and end is not None and start >= end:
        raise InvalidParameter("from must be before to", field="from")
    group_by = query.get("group_by")
    if group_by is not None and group_by not in BUCKETS:
        raise InvalidParameter(f"group_by must be {' or '.join(BUCKETS)}", field="group_by")
    if analytics.reader is None:
        raise web.HTTPNotFound(text="the event store is off (OTELSVC_STORE=off): there are no analytics")
    reader = analytics.reader
    part = Slice(business_id, start, end)
    try:
        async with analytics.turns:
            # The reader stops the query at its deadline; this bounds the wait whatever happens.
            figures = await asyncio.wait_for(
                asyncio.to_thread(reader.read, part, group_by), reader.timeout + 1.0
            )
    except (StoreTimeout, TimeoutError):
        raise Unavailable(
            f"the analytics query took longer than {reader.timeout:g} s; narrow it (from, to)",
            reason="analytics_timeout",
            retry_after=5,
        ) from None
    except StoreError as exc:
        raise Unavailable(
            f"cannot read the event store: {exc}", reason="store_unreadable", retry_after=10
        ) from None
    body: dict[str, Any] = {"business_id": business_id, "from": _iso(start), "to": _iso(end), **figures}
    return json_response(body)


async def lab_analytics(analytics: Analytics, request: web.BaseRequest) -> web.Response:
    """``GET /analytics/{business_id}``: one business's figures."""
    business_id = _business(request.path[len(_LAB_PREFIX) :])
    return await _answer(analytics, business_id, _query(request, ("from", "to", "group_by")))


async def v1_analytics(analytics: Analytics, request: web.BaseRequest) -> web.Response:
    """``GET /v1/analytics``: one business's figures (``business_id``), or every business's."""
    query = _query(request, ("business_id", "from", "to", "group_by"))
    business_id = _business(query["business_id"]) if "business_id" in query else None
    return await _answer(analytics, business_id, query)


def analytics_routes(analytics: Analytics) -> Routes:
    """The ``ANALYTICS_PATHS`` endpoints, bound to ``analytics``."""
    return {
        LAB_PATH: {"GET": partial(lab_analytics, analytics)},
        V1_PATH: {"GET": partial(v1_analytics, analytics)},
    }


# -- the OpenAPI description (``openapi.openapi_document`` adds it) -----------------------------------

_INT = {"type": "integer"}
_NUMBER = {"type": "number"}
_MAYBE = {"type": ["number", "null"]}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


def _map(values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values}


_TOTALS = _object(
    requests=_object(total=_INT, successful=_INT, failed=_INT, success_rate=_MAYBE),
    response_time_ms=_object(avg=_MAYBE, p50=_MAYBE, p95=_MAYBE, p99=_MAYBE),
    tokens=_object(total=_INT, input=_INT, output=_INT, cached_input=_INT, reasoning=_INT),
    cost_usd=_object(total=_NUMBER, unpriced_calls=_INT, by_model=_map(_NUMBER)),
    appointments=_object(requested=_INT, booked=_INT, conversion_rate=_MAYBE),
    handoffs=_object(count=_INT, rate=_MAYBE),
    user_satisfaction=_object(avg=_MAYBE, count=_INT),
    reported_success_rate=_object(avg=_MAYBE, count=_INT),
)
_BUCKET = _object(
    start={"type": "string", "format": "date-time"},
    requests=_object(total=_INT, successful=_INT, failed=_INT),
    response_time_ms=_object(avg=_MAYBE),
    tokens=_INT,
    cost_usd=_NUMBER,
    appointments=_object(requested=_INT, booked=_INT),
    handoffs=_INT,
    predictions=_INT,
    feedback=_INT,
)
#: The ``Analytics`` schema: every figure (``store.queries`` says how each is computed).
ANALYTICS_SCHEMA: dict[str, Any] = {
    "description": "Exact figures of the event store's rows in the range. Requests are LLM calls; "
    "percentiles by the nearest-rank method; averages and rates with nothing to divide by are null.",
    "type": "object",
    "required": ["business_id", "from", "to", "events", *_TOTALS["required"]],
    "properties": {
        "business_id": {"type": ["string", "null"], "description": "null: every business."},
        "from": {"type": ["string", "null"], "format": "date-time"},
        "to": {"type": ["string", "null"], "format": "date-time"},
        "events": _object(llm_call=_INT, prediction=_INT, feedback=_INT),
        **_TOTALS["properties"],
        "by_intent": _map(_object(requests=_INT, failed=_INT, cost_usd=_NUMBER)),
        "by_model": _map(
            _object(requests=_INT, failed=_INT, avg_response_time_ms=_MAYBE, tokens=_INT, cost_usd=_NUMBER)
        ),
        "by_response_type": _map(_object(requests=_INT)),
        "ml": _object(
            predictions=_map(
                _map(_object(total=_INT, failed=_INT, avg_duration_ms=_MAYBE, by_result=_map(_INT)))
            ),
            accuracy=_map(_map(_object(feedback=_INT, correct=_INT, accuracy=_MAYBE))),
        ),
        "group_by": {"enum": list(BUCKETS)},
        "series": {
            "type": "array",
            "items": _BUCKET,
            "description": "With group_by: UTC buckets with events.",
        },
    },
}


def _parameter(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def analytics_paths(error: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI path items of ``ANALYTICS_PATHS`` (``error``: the error answer's schema)."""
    common = [
        _parameter("from", "query", "RFC 3339 with a zone, or Unix seconds; inclusive (default: all)"),
        _parameter("to", "query", "RFC 3339 with a zone, or Unix seconds; exclusive (default: all)"),
        _parameter("group_by", "query", "a time series as well, by UTC hour or day", enum=list(BUCKETS)),
    ]
    answers = {
        "200": {
            "description": "The figures (zeros for a business with no events).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Analytics"}}},
        },
        **{
            str(code): {"description": text, "content": {"application/json": {"schema": error}}}
            for code, text in (
                (400, "A wrong, repeated or unknown parameter; the error names it."),
                (401, "Missing or wrong bearer token."),
                (404, "The event store is off (OTELSVC_STORE=off)."),
                (503, "The query took too long or the store cannot be read; see Retry-After."),
            )
        },
    }
    return {
        LAB_PATH: {
            "get": {
                "summary": "Analytics of one business from the event store (the lab's URL).",
                "parameters": [_parameter("business_id", "path", "the business"), *common],
                "responses": answers,
            }
        },
        V1_PATH: {
            "get": {
                "summary": "Analytics from the event store, of one business or all.",
                "parameters": [_parameter("business_id", "query", "the business (default: all)"), *common],
                "responses": answers,
            }
        },
    }
