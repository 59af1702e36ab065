"""HTTP middlewares: the single error boundary, auth, rate limits, CORS and request accounting."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ._errors import OtelServiceError, RateLimited, Unauthorized
from ._histograms import HistogramSet
from ._instruments import IntakeInstruments
from ._intake import IntakeStats
from ._rate_limit import RateLimiter

__all__ = ["create_middlewares"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = logging.getLogger("otel_service")
_OPEN_PATHS = frozenset({"/health", "/ready"})


def _json_error(error: OtelServiceError, endpoint: str) -> web.Response:
    response = web.json_response(error.to_json(), status=error.status)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


def create_middlewares(
    *,
    stats: IntakeStats,
    instruments: IntakeInstruments,
    histograms: HistogramSet,
    auth_token: str | None,
    limiter: RateLimiter | None,
    cors_origins: tuple[str, ...],
) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    token = auth_token.encode() if auth_token else None

    @web.middleware
    async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turns domain errors (and aiohttp's own 4xx) into JSON; counts every request."""
        started = time.perf_counter()
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "unmatched"
        stats.requests += 1
        stats.last_request = time.time()
        try:
            response = await handler(request)
        except OtelServiceError as error:
            stats.rejected[(path, error.reason)] += 1
            response = _json_error(error, path)
        except web.HTTPException as exc:
            if exc.status >= 400:
                reason = exc.reason.lower().replace(" ", "_")
                stats.rejected[(path, reason)] += 1
                response = web.json_response(
                    {"error": reason, "message": exc.text or exc.reason},
                    status=exc.status,
                    headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
                )
            else:
                raise
        except Exception:
            _log.exception("unexpected error on %s %s", request.method, request.path)
            response = web.json_response({"error": "internal", "message": "internal error"}, status=500)
        if response.status >= 400:
            stats.failed_requests += 1
        with histograms.lock:
            instruments.request_duration.record(
                time.perf_counter() - started,
                {
                    "http.request.method": request.method,
                    "http.route": path,
                    "http.response.status_code": response.status,
                },
            )
        return response

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer auth (constant-time compare) and per-client rate limits on non-probe paths."""
        if request.path in _OPEN_PATHS:
            return await handler(request)
        if token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token):
                raise Unauthorized("missing or wrong bearer token")
        if limiter is not None and request.method == "POST":
            client = request.remote or "unknown"
            wait = limiter.take(client)
            if wait > 0:
                raise RateLimited(f"rate limit exceeded for {client}", retry_after=wait)
        return await handler(request)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in cors_origins
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = (
                "Content-Type, Authorization, X-Correlation-ID, X-Request-ID, traceparent"
            )
            response.headers["Access-Control-Expose-Headers"] = "X-Correlation-ID"
        return response

    return [boundary, cors, guard]
