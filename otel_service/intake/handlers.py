"""The intake endpoints: ``/track``, ``/v1/events``, and the ones any intake process answers itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any

from aiohttp import web

from ..config import Settings
from ..model.context import RequestContext
from ..model.errors import Unavailable
from ..model.validation import Limits, parse_batch, parse_track
from ..spool.commit import GroupCommit
from ..telemetry.aggregates import Aggregates
from ..telemetry.instruments import IntakeInstruments
from .accept import Intake
from .body import BATCH_TYPES, JSON_TYPES, read_body
from .openapi import openapi_document
from .rate_limit import RateLimiter
from .server import Handler, Routes, create_handler, json_response

__all__ = ["Service", "intake_handler", "intake_routes", "request_context"]


@dataclass
class Service:
    """What the intake endpoints need (in every intake process)."""

    settings: Settings
    intake: Intake
    instruments: IntakeInstruments
    aggregates: Aggregates
    #: With ``OTELSVC_SPOOL_FSYNC=always``: answers wait until their events are on stable storage.
    commit: GroupCommit | None = None
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(max_items=self.settings.max_batch_items)

    async def durable(self) -> None:
        """Wait until accepted events are durable, as the fsync policy promises."""
        if self.commit is None:
            return
        try:
            await self.commit.wait()
        except OSError as exc:
            raise Unavailable(
                f"cannot sync the export spool: {exc.strerror}", reason="spool_unwritable", retry_after=10
            ) from None


def intake_handler(service: Service, routes: Routes) -> Handler:
    """The server's one handler for ``routes``: guarded, counted and timed as ``service``'s settings ask."""
    settings = service.settings
    return create_handler(
        routes,
        stats=service.intake.stats,
        instruments=service.instruments,
        aggregates=service.aggregates,
        auth_token=settings.auth_token,
        limiter=RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None,
        cors_origins=settings.cors_origins,
        allowed_hosts=(settings.host, *settings.allowed_hosts),
    )


def request_context(request: web.BaseRequest) -> RequestContext:
    """The request's correlation headers, resolved once (see ``RequestContext``)."""
    headers = request.headers
    return RequestContext.from_headers(
        headers.get("X-Correlation-ID") or headers.get("X-Request-ID"),
        headers.get("traceparent"),
        headers.get("tracestate"),
    )


async def track(service: Service, request: web.BaseRequest) -> web.Response:
    """The lab's ``POST /track``: one flat event."""
    body = await read_body(request, JSON_TYPES, service.settings.max_body_bytes)
    event = parse_track(body, time.time(), service.limits)
    accepted = service.intake.accept([(0, event)], source="track", request=request_context(request))[0]
    await service.durable()
    return json_response(
        {
            "status": "success",
            "message": "Metrics tracked successfully",
            "prometheus_updated": True,
            "timestamp": datetime.now(UTC).isoformat(),
            "correlation_id": accepted.correlation_id,
            "trace_id": accepted.trace_id,
        },
        status=202,
        headers={"X-Correlation-ID": accepted.correlation_id},
    )


async def refresh_metrics(service: Service, request: web.BaseRequest) -> web.Response:
    """The lab's ``POST /refresh-metrics`` (its client calls it after every ``/track``): the lab rebuilt
    its counters from its database; here they never start over, so there is nothing to do. The body
    (the lab sends ``{"trigger": "new_metrics"}``) is not read."""
    return json_response(
        {
            "status": "success",
            "message": "Nothing to refresh: metric totals are continuous (kept across restarts with "
            "the spool), so there is nothing to rebuild from a database",
            "timestamp": datetime.now(UTC).isoformat(),
        }
    )


async def events(service: Service, request: web.BaseRequest) -> web.Response:
    """``POST /v1/events``: one event, a JSON array, or NDJSON; valid items are accepted."""
    body = await read_body(request, BATCH_TYPES, service.settings.max_body_bytes)
    parsed = parse_batch(
        body,
        ndjson=request.content_type != "application/json",
        now=time.time(),
        limits=service.limits,
    )
    valid = [(item.index, item.event) for item in parsed if item.event is not None]
    errors = [(item.index, item.error) for item in parsed if item.error is not None]
    context = request_context(request)
    accepted = service.intake.accept(valid, source="events", request=context)
    if accepted:
        await service.durable()
    for _, error in errors:
        service.intake.stats.reject("/v1/events", error.reason)
    answer: dict[str, Any] = {
        "accepted": len(accepted),
        "rejected": len(errors),
        "errors": [{"index": index, **error.to_json()} for index, error in errors],
    }
    # One event: its own IDs. A batch: the request's correlation ID (header, traceparent, or the
    # trace its events without a context of their own share).
    correlation_id = context.correlation_id
    if len(parsed) == 1 and accepted:
        correlation_id = answer["correlation_id"] = accepted[0].correlation_id
        answer["trace_id"] = accepted[0].trace_id
        answer["span_id"] = accepted[0].span_id
    return json_response(
        answer, status=202 if accepted else 400, headers={"X-Correlation-ID": correlation_id}
    )


async def openapi(service: Service, request: web.BaseRequest) -> web.Response:
    return json_response(openapi_document())


#: The dashboard's icon (any browser page's /favicon.ico): an SVG, so it needs no binary file.
_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#1f2937"/>'
    b'<path d="M2 11h3l2-6 2 8 2-4h3" fill="none" stroke="#34d399" stroke-width="1.6"/></svg>'
)


async def favicon(service: Service, request: web.BaseRequest) -> web.Response:
    return web.Response(
        body=_FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"}
    )


async def dashboard(service: Service, request: web.BaseRequest) -> web.Response:
    html = resources.files("otel_service.intake").joinpath("dashboard.html").read_bytes()
    return web.Response(body=html, content_type="text/html")


def intake_routes(service: Service) -> Routes:
    """The endpoints every intake process serves itself, bound to ``service``."""
    table = {
        "/track": ("POST", track),
        "/refresh-metrics": ("POST", refresh_metrics),
        "/v1/events": ("POST", events),
        "/openapi.json": ("GET", openapi),
        "/": ("GET", dashboard),
        "/favicon.ico": ("GET", favicon),
    }
    return {path: {method: partial(handler, service)} for path, (method, handler) in table.items()}
