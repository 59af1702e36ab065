"""The status endpoints: ``/metrics``, ``/health``, ``/ready`` and ``/health/detailed``.

They read the whole sidecar's state, so the first intake process answers them; the others forward them
to it over a unix socket (``Forwarder``), and the analytics endpoints too (``analytics``). What they
need of the export side is ``ExportView``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from .._version import __version__
from ..model.errors import Unavailable
from ..spool import Position
from .accept import IntakeStats
from .analytics import ANALYTICS_PATHS, Analytics, analytics_routes
from .fresh import FreshReads
from .handlers import Service
from .server import Handler, Routes, json_response

__all__ = ["READY_FILL_RATIO", "STATUS_PATHS", "ExportView", "Forwarder", "Status", "status_routes"]

_FORWARD_TIMEOUT = 10.0
#: /ready turns not-ready at this spool fill ratio, before intake refuses at 1.0.
READY_FILL_RATIO = 0.8
#: The endpoints that read the service's state; intake processes other than the first forward them.
STATUS_PATHS = ("/metrics", "/health", "/ready", "/health/detailed")


class ExportView(Protocol):
    """What the status endpoints read from the export side (in this process or another)."""

    def alive(self) -> bool: ...

    def failed(self) -> bool:
        """It is down and cannot be brought back (liveness fails)."""
        ...

    async def metrics_text(self) -> bytes: ...

    async def status(self) -> dict[str, Any]: ...

    async def recorded(self) -> Position | None:
        """The end of the last batch whose metrics are recorded, in the main spool (None: unknown)."""
        ...


@dataclass
class Status:
    """What the status endpoints read (in the first intake process only; the others forward to it)."""

    service: Service
    export: ExportView
    registry: CollectorRegistry
    process: psutil.Process
    #: The intake's counters: with several intake processes, all of theirs together.
    stats: Callable[[], IntakeStats]
    #: Each intake process: index, pid, alive, restarts.
    processes: Callable[[], list[dict[str, Any]]]
    #: Why not every intake process is serving (readiness problems).
    intake_problems: Callable[[], list[str]]
    #: Holds reads until they see every event acknowledged before them (None: no wait).
    fresh: FreshReads | None = None
    #: The analytics endpoints (the event store's reader), served beside these.
    analytics: Analytics | None = None


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


async def metrics(status: Status, request: web.BaseRequest) -> web.Response:
    """Prometheus text: the intake's own metrics and the exporter's (event) metrics, with every event
    acknowledged before the request counted."""
    if status.fresh is not None:
        await status.fresh.wait(request.path)
    exported = await status.export.metrics_text()
    own = generate_latest(status.registry)
    return web.Response(
        body=exported + own, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def health(status: Status, request: web.BaseRequest) -> web.Response:
    """Liveness: the sidecar answers, and its export side runs or is being restarted. The body has the
    lab's fields (``status``, ``service``, ``timestamp``, ``monitoring``) and the version."""
    body: dict[str, Any] = {
        "status": "healthy",
        "service": status.service.settings.service_name,
        "version": __version__,
        "timestamp": datetime.now(UTC).isoformat(),
        # The lab's value: metrics are served in the Prometheus format (at /metrics).
        "monitoring": "prometheus",
    }
    if status.export.failed():
        body.update(status="unhealthy", problems=["export process cannot start"])
        return json_response(body, status=503)
    return json_response(body)


async def ready(status: Status, request: web.BaseRequest) -> web.Response:
    """Readiness: intake open, exporter alive, and the spool below its high-water mark."""
    service = status.service
    problems = []
    if service.intake.closed:
        problems.append("shutting down")
    problems.extend(status.intake_problems())
    if not status.export.alive():
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
    if status.fresh is not None:
        await status.fresh.wait(request.path)
    stats = status.stats()
    process = status.process
    with process.oneshot():
        memory = process.memory_info().rss
        cpu = process.cpu_percent(interval=None)
    uptime = time.time() - stats.started
    export = await status.export.status()
    return json_response(
        {
            "status": "healthy" if status.export.alive() else "degraded",
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


class Forwarder:
    """Answers the status endpoints in intake processes other than the first, by asking the first over
    its unix socket: every process then reports the same (summed, monotonic) counters."""

    def __init__(self, socket_path: Path) -> None:
        self._socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> Routes:
        return {path: {"GET": self.forward} for path in (*STATUS_PATHS, *ANALYTICS_PATHS)}

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
    """The ``STATUS_PATHS`` endpoints, bound to ``status`` (and the analytics ones, if it has them)."""
    handlers = (metrics, health, ready, health_detailed)
    pairs = zip(STATUS_PATHS, handlers, strict=True)
    routes = {path: {"GET": partial(handler, status)} for path, handler in pairs}
    if status.analytics is None:
        return routes
    analytics = {
        path: {method: partial(_fresh_then, status, handler) for method, handler in methods.items()}
        for path, methods in analytics_routes(status.analytics).items()
    }
    return {**routes, **analytics}


async def _fresh_then(status: Status, handler: Handler, request: web.BaseRequest) -> web.StreamResponse:
    """``handler``, once every event acknowledged before the request is in the store (bounded)."""
    if status.fresh is not None:
        await status.fresh.wait("/analytics")
    return await handler(request)
