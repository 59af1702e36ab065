"""The connection layer under the one request handler: aiohttp's low-level server, with a bound on open
connections (per process and per client address), a deadline for a new connection's first request
headers, an idle keep-alive timeout, and JSON answers for requests aiohttp cannot even parse.

Every connection or request refused here is counted (``IntakeStats.reject``: route ``connection`` or
``unmatched``) and logged as one line a minute per kind with a count, never a traceback each: a flood
of bad clients cannot flood the log, and well-behaved clients keep their connections.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..telemetry.logs import diagnostics
from .accept import IntakeStats
from .server import UNMATCHED, Handler, json_response

__all__ = ["CONNECTION", "ConnectionLimits", "JsonServer"]

#: The route label of refused connections.
CONNECTION = "connection"
#: At most one diagnostic line per this many seconds per kind of refusal.
_LOG_SECONDS = 60.0
_log = diagnostics()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may hold and for how long."""

    max_connections: int = 512
    max_per_client: int = 256
    #: Seconds a new connection has to send its first request's headers.
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection is kept.
    keepalive_timeout: float = 30.0


class JsonServer(web.Server):
    """aiohttp's low-level server with the limits above and JSON protocol errors."""

    def __init__(
        self, handler: Handler, *, stats: IntakeStats, limits: ConnectionLimits, **kwargs: Any
    ) -> None:
        self._started: weakref.WeakSet[RequestHandler] = weakref.WeakSet()

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            self._started.add(request.protocol)  # its first request's headers arrived
            return await handler(request)

        super().__init__(handle, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._stats = stats
        self._limits = limits
        self._clients: dict[RequestHandler, str] = {}
        self._per_client: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def __call__(self) -> RequestHandler:
        protocol = _JsonErrors(self, loop=self._loop, **self._kwargs)
        protocol.refused = self.refused
        return protocol

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        self._clients[handler] = client
        self._per_client[client] += 1
        limits = self._limits
        if len(self._clients) > limits.max_connections:
            self._drop(transport, "too_many_connections")
        elif self._per_client[client] > limits.max_per_client:
            self._drop(transport, "too_many_connections_from_client")
        else:
            self._loop.call_later(limits.header_timeout, self._deadline, handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        client = self._clients.pop(handler, None)
        if client is not None:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    def _deadline(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if handler not in self._started and not transport.is_closing():
            self._drop(transport, "header_timeout")

    def _drop(self, transport: asyncio.Transport, reason: str) -> None:
        # Closed on the next loop iteration, once aiohttp's handler task for it has started: closing
        # within connection_made makes that task fail (an asyncio error line per connection).
        self._loop.call_soon(transport.close)
        self._stats.reject(CONNECTION, reason)
        self._say("connections_refused", reason)

    def refused(self, reason: str) -> None:
        """A request aiohttp could not parse was answered (``_JsonErrors``)."""
        stats = self._stats
        stats.requests += 1
        stats.failed_requests += 1
        stats.reject(UNMATCHED, reason)
        self._say("http_requests_refused", reason)

    def _say(self, event: str, reason: str) -> None:
        """One line per minute per (event, reason), with how many happened since the last one."""
        key = f"{event}:{reason}"
        self._unlogged[key] += 1
        now = time.monotonic()
        if now - self._logged_at.get(key, -_LOG_SECONDS) >= _LOG_SECONDS:
            _log.warning(event, reason=reason, count=self._unlogged.pop(key), period_seconds=_LOG_SECONDS)
            self._logged_at[key] = now


class _JsonErrors(RequestHandler):
    refused: Callable[[str], None]

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer is under way: none can follow (as aiohttp)
            raise ConnectionError("the answer was being sent: no error answer can follow")
        reason = "malformed_http_request" if status < 500 else "internal"
        self.refused(reason)
        detail = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        answer = json_response(
            {"error": reason, "message": f"the request could not be read ({detail})", "field": "$request"},
            status=status,
        )
        answer.headers["Server"] = "otel-service"
        answer.force_close()
        return answer
