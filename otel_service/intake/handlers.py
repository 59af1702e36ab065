"""HTTP handlers: intake endpoints, metrics, health probes, the OpenAPI document and the dashboard."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import HttpVersion11, StreamReader, web
from prometheus_client import CollectorRegistry, generate_latest

from .._version import __version__
from ..config import Settings
from ..model.context import parse_traceparent, resolve_correlation_id
from ..model.errors import ExpectationFailed, InvalidEvent, PayloadTooLarge, Unavailable, UnsupportedMediaType
from ..model.validation import parse_batch, parse_track
from ..runtime.export_host import ExportRunner
from ..spool.commit import GroupCommit
from ..spool.segments import SpoolWriter
from ..telemetry.histograms import HistogramSet
from ..telemetry.instruments import IntakeInstruments
from .accept import Intake, IntakeStats
from .openapi import openapi_document
from .rate_limit import RateLimiter
from .server import Handler, Routes, create_handler, json_response

__all__ = [
    "STATUS_PATHS",
    "Forwarder",
    "Service",
    "Status",
    "group_commit",
    "intake_handler",
    "intake_routes",
    "status_routes",
]

_JSON_TYPES = frozenset({"application/json"})
#: zlib ``wbits`` per accepted Content-Encoding (None: as is).
_DECODERS: dict[str, int | None] = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_BODY_DEADLINE = 10.0
_FORWARD_TIMEOUT = 10.0
_BATCH_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl"})
#: /ready turns not-ready at this spool fill ratio, before intake refuses at 1.0.
READY_FILL_RATIO = 0.8


@dataclass
class Service:
    """What the intake endpoints need (in every intake process)."""

    settings: Settings
    intake: Intake
    instruments: IntakeInstruments
    histograms: HistogramSet
    #: With ``OTELSVC_SPOOL_FSYNC=always``: answers wait until their events are on stable storage.
    commit: GroupCommit | None = None

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


@dataclass
class Status:
    """What the status endpoints read (in the first intake process only; the others forward to it)."""

    service: Service
    runner: ExportRunner
    registry: CollectorRegistry
    process: psutil.Process
    #: The intake's counters: with several intake processes, all of theirs together.
    stats: Callable[[], IntakeStats]
    #: Each intake process: index, pid, alive, restarts.
    processes: Callable[[], list[dict[str, Any]]]
    #: Why not every intake process is serving (readiness problems).
    intake_problems: Callable[[], list[str]]


def group_commit(settings: Settings, writer: SpoolWriter) -> GroupCommit | None:
    """What ``Service.commit`` is under the fsync policy: group commits only with ``always``."""
    return GroupCommit(writer.sync) if settings.spool_fsync == "always" else None


def intake_handler(service: Service, routes: Routes) -> Handler:
    """The server's one handler for ``routes``: guarded, counted and timed as ``service``'s settings ask."""
    settings = service.settings
    return create_handler(
        routes,
        stats=service.intake.stats,
        instruments=service.instruments,
        histograms=service.histograms,
        auth_token=settings.auth_token,
        limiter=RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None,
        cors_origins=settings.cors_origins,
    )


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


async def _body(request: web.BaseRequest, allowed: frozenset[str], service: Service) -> bytes:
    if request.content_type not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {sorted(allowed)}, got {request.content_type!r}",
            field="Content-Type",
        )
    if request.charset not in (None, "utf-8", "UTF-8"):
        raise UnsupportedMediaType("only UTF-8 bodies are accepted", field="Content-Type")
    limit = service.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", field="$")
    encoding = request.headers.get("Content-Encoding")
    encoding = "identity" if encoding is None else encoding.strip().lower()
    if encoding not in _DECODERS:
        raise UnsupportedMediaType(
            f"Content-Encoding must be one of {sorted(_DECODERS)}, got {encoding!r}",
            field="Content-Encoding",
        )
    try:
        if request.content.is_eof():  # the usual small body arrived with the headers: take it
            raw = request.content.read_nowait()
        else:
            await _continue(request)
            async with asyncio.timeout(_BODY_DEADLINE):
                raw = await _read_bounded(request.content, limit)
    except TimeoutError:
        raise InvalidEvent(
            f"body not received within {_BODY_DEADLINE:.0f} s", field="$", reason="body_timeout"
        ) from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", field="$")
    body = _decompress(raw, encoding, limit)
    if not body:
        raise InvalidEvent("empty body", field="$", reason="empty_body")
    return body


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` once the headers passed every check (curl sends it before
    large bodies and waits for it): the client sends the body only then."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != HttpVersion11:
        return
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed(f"only 100-continue is supported, got {expect!r}", field="Expect")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper starts after this interim one


async def _read_bounded(stream: StreamReader, limit: int) -> bytes:
    """The body as it arrives; stops reading once it exceeds ``limit`` (the caller refuses it)."""
    chunks = []
    size = 0
    while size <= limit and (chunk := await stream.readany()):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """Inflate ``raw``; refuse output beyond ``limit`` (decompression bombs) and corrupt data."""
    wbits = _DECODERS[encoding]
    if wbits is None:
        return raw
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
        if len(body) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"body exceeds {limit} bytes after decompression", field="$")
        if not inflater.eof:
            raise InvalidEvent(f"truncated {encoding} body", field="$", reason="corrupt_body")
    except zlib.error as exc:
        raise InvalidEvent(f"corrupt {encoding} body: {exc}", field="$", reason="corrupt_body") from None
    return body


async def track(service: Service, request: web.BaseRequest) -> web.Response:
    """The lab's ``POST /track``: one flat event."""
    body = await _body(request, _JSON_TYPES, service)
    event = parse_track(body, time.time(), service.settings.limits)
    accepted = service.intake.accept(
        [(0, event)],
        source="track",
        header_correlation_id=_header_correlation(request),
        parent=parse_traceparent(request.headers.get("traceparent")),
    )[0]
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


def _header_correlation(request: web.BaseRequest) -> str | None:
    return request.headers.get("X-Correlation-ID") or request.headers.get("X-Request-ID")


async def events(service: Service, request: web.BaseRequest) -> web.Response:
    """``POST /v1/events``: one event, a JSON array, or NDJSON; valid items are accepted."""
    body = await _body(request, _BATCH_TYPES, service)
    parsed = parse_batch(
        body,
        ndjson=request.content_type != "application/json",
        now=time.time(),
        limits=service.settings.limits,
    )
    valid = [(item.index, item.event) for item in parsed if item.event is not None]
    errors = [item for item in parsed if item.error is not None]
    parent = parse_traceparent(request.headers.get("traceparent"))
    header_cid = _header_correlation(request)
    accepted = service.intake.accept(valid, source="events", header_correlation_id=header_cid, parent=parent)
    if accepted:
        await service.durable()
    for item in errors:
        assert item.error is not None
        service.intake.stats.rejected[("/v1/events", item.error.reason)] += 1
    if len(parsed) == 1 and accepted:
        correlation_id = accepted[0].correlation_id
    else:  # the request's own: header, traceparent, or the trace its parentless events share
        fallback = accepted[0].trace_id if accepted else ""
        correlation_id = resolve_correlation_id(None, header_cid, parent, fallback)
    answer: dict[str, Any] = {
        "accepted": len(accepted),
        "rejected": len(errors),
        "errors": [
            {"index": item.index, **item.error.to_json()} for item in errors if item.error is not None
        ],
    }
    if len(parsed) == 1 and accepted:
        answer["correlation_id"] = accepted[0].correlation_id
        answer["trace_id"] = accepted[0].trace_id
        answer["span_id"] = accepted[0].span_id
    status = 202 if accepted else 400
    headers = {"X-Correlation-ID": correlation_id} if correlation_id else {}
    return json_response(answer, status=status, headers=headers)


async def metrics(status: Status, request: web.BaseRequest) -> web.Response:
    """Prometheus text: the intake's own metrics and the exporter's (event) metrics."""
    exported = await status.runner.metrics_text()
    own = generate_latest(status.registry)
    return web.Response(
        body=exported + own, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def health(service: Service, request: web.BaseRequest) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "healthy", "version": __version__})


async def ready(status: Status, request: web.BaseRequest) -> web.Response:
    """Readiness: intake open, exporter alive, and the spool below its high-water mark."""
    service = status.service
    problems = []
    if service.intake.closed:
        problems.append("shutting down")
    problems.extend(status.intake_problems())
    if not status.runner.alive():
        problems.append("export worker not running")
    fill = service.intake.fill_ratio
    if fill >= READY_FILL_RATIO:
        problems.append(f"export spool {fill:.0%} full")
    max_age = service.settings.spool_max_age
    if max_age and service.intake.oldest_age() >= READY_FILL_RATIO * max_age:
        problems.append(f"oldest undelivered event waited {service.intake.oldest_age():.0f} s")
    body = {"status": "ready" if not problems else "not_ready", "problems": problems}
    return json_response(body, status=200 if not problems else 503)


async def health_detailed(status: Status, request: web.BaseRequest) -> web.Response:
    """Uptime, resources, request and event counts, and the export path's state."""
    stats = status.stats()
    process = status.process
    with process.oneshot():
        memory = process.memory_info().rss
        cpu = process.cpu_percent(interval=None)
    uptime = time.time() - stats.started
    export = await status.runner.status()
    return json_response(
        {
            "status": "healthy" if status.runner.alive() else "degraded",
            "service": status.service.settings.service_name,
            "version": __version__,
            "timestamp": datetime.now(UTC).isoformat(),
            "uptime": {
                "seconds": round(uptime, 3),
                "hours": round(uptime / 3600, 4),
                "days": round(uptime / 86400, 5),
                "started_at": _iso(stats.started),
            },
            "system": {
                "memory_usage_mb": round(memory / 2**20, 2),
                "cpu_percent": cpu,
                "process_id": os.getpid(),
            },
            "requests": {
                "total": stats.requests,
                "failed": stats.failed_requests,
                "error_rate_percent": round(
                    100 * stats.failed_requests / stats.requests if stats.requests else 0.0, 3
                ),
                "last_request": _iso(stats.last_request),
            },
            "events": {
                "accepted": stats.accepted_by_kind(),
                "rejected": stats.rejected_by_reason(),
            },
            "intake_processes": status.processes(),
            "export": export,
        }
    )


async def openapi(service: Service, request: web.BaseRequest) -> web.Response:
    return json_response(openapi_document())


async def dashboard(service: Service, request: web.BaseRequest) -> web.Response:
    html = resources.files("otel_service.intake").joinpath("dashboard.html").read_bytes()
    return web.Response(body=html, content_type="text/html")


#: The endpoints that read the service's state; intake processes other than the first forward them.
STATUS_PATHS = ("/metrics", "/ready", "/health/detailed")


def intake_routes(service: Service) -> Routes:
    """The endpoints every intake process serves itself, bound to ``service``."""
    table = {
        "/track": ("POST", track),
        "/v1/events": ("POST", events),
        "/health": ("GET", health),
        "/openapi.json": ("GET", openapi),
        "/": ("GET", dashboard),
    }
    return {path: {method: partial(handler, service)} for path, (method, handler) in table.items()}


class Forwarder:
    """Answers the status endpoints in intake processes other than the first, by asking the first over
    its unix socket: every process then reports the same (summed, monotonic) counters."""

    def __init__(self, socket_path: Path) -> None:
        self._socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> Routes:
        return {path: {"GET": self.forward} for path in STATUS_PATHS}

    async def forward(self, request: web.BaseRequest) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._socket_path)),
                timeout=aiohttp.ClientTimeout(total=_FORWARD_TIMEOUT),
            )
        try:
            async with self._session.get(f"http://intake{request.rel_url}") as answer:
                body = await answer.read()
                content_type = answer.headers.get("Content-Type", "application/octet-stream")
                return web.Response(body=body, status=answer.status, headers={"Content-Type": content_type})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(
                f"the first intake process does not answer: {exc}", reason="status_unavailable", retry_after=1
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def status_routes(status: Status) -> Routes:
    """The ``STATUS_PATHS`` endpoints, bound to ``status``."""
    handlers = (metrics, ready, health_detailed)
    pairs = zip(STATUS_PATHS, handlers, strict=True)
    return {path: {"GET": partial(handler, status)} for path, handler in pairs}
