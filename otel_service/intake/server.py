"""The HTTP boundary: routing, and the single error boundary with auth, rate limits, CORS and accounting.

The sidecar runs on aiohttp's low-level server: on the intake path, the application router and a
middleware chain cost about 10 % of a request, and a route table of eight paths needs neither.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from ..config import is_loopback
from ..model.errors import ForbiddenHost, OtelServiceError, RateLimited, Unauthorized
from ..telemetry.aggregates import Aggregates
from ..telemetry.instruments import IntakeInstruments
from ..telemetry.logs import diagnostics
from .accept import IntakeStats
from .rate_limit import RateLimiter

__all__ = ["UNMATCHED", "Handler", "Routes", "create_handler", "create_status_handler", "json_response"]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
#: Path → method → handler. A GET route also answers HEAD. A path whose last segment is a parameter
#: (``/analytics/{business_id}``) matches any one non-empty segment there; the handler reads it.
Routes = Mapping[str, Mapping[str, Handler]]

_log = diagnostics()
#: Served without the token: the probes, and the icon a browser asks for on any page.
_OPEN_PATHS = frozenset({"/health", "/ready", "/favicon.ico"})
#: The route label of requests for paths the sidecar does not serve.
UNMATCHED = "unmatched"
#: Methods named as such on the request-duration metric; any other is "_OTHER" (semantic conventions).
_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
_CORS_HEADERS = {
    "Vary": "Origin",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Content-Type, Authorization, X-Correlation-ID, X-Request-ID, traceparent"
    ),
    "Access-Control-Expose-Headers": "X-Correlation-ID",
}


def _host_name(host: str) -> str:
    """The name in a Host header, without the port (``[::1]:5001`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def json_response(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer rendered with orjson."""
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _error_response(error: OtelServiceError) -> web.Response:
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return json_response(error.to_json(), status=error.status, headers=headers)


def _with_head(routes: Routes) -> dict[str, dict[str, Handler]]:
    table = {}
    for path, methods in routes.items():
        table[path] = dict(methods)
        if "GET" in methods:
            table[path].setdefault("HEAD", methods["GET"])
    return table


def _router(table: Mapping[str, object]) -> Callable[[str], str | None]:
    """The route a request path takes: itself, a template it matches, or ``None``."""
    templates = [(path.partition("{")[0], path) for path in table if path.endswith("}")]

    def route(path: str) -> str | None:
        if path in table:
            return path
        for prefix, template in templates:
            if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix) :]:
                return template
        return None

    return route


def create_status_handler(routes: Routes) -> Handler:
    """The handler of the first intake process's unix socket, where the others forward the status
    endpoints: the forwarding process already guarded, counted and timed the request."""
    table = _with_head(routes)
    route = _router(table)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        handler = table.get(route(request.path) or "", {}).get(request.method)
        if handler is None:
            return json_response({"error": "not_found", "message": "Not Found"}, status=404)
        return await handler(request)

    return handle


def create_handler(
    routes: Routes,
    *,
    stats: IntakeStats,
    instruments: IntakeInstruments,
    aggregates: Aggregates,
    auth_token: str | None,
    limiter: RateLimiter | None,
    cors_origins: tuple[str, ...],
    allowed_hosts: tuple[str, ...] = (),
) -> Handler:
    """The server's one request handler: finds the route, applies the guards, and turns every error
    (domain errors, aiohttp's own 4xx, and bugs) into a JSON answer; times every request and
    counts those for the API's paths.

    Without ``auth_token``, only requests for a loopback name or one of ``allowed_hosts`` are served
    (the DNS-rebinding guard); with it, the token is the guard."""
    table = _with_head(routes)
    route = _router(table)
    token = auth_token.encode() if auth_token else None
    origins = frozenset(cors_origins)
    hosts = None if token is not None else frozenset(h.lower() for h in allowed_hosts)
    guarded = token is not None or limiter is not None

    def check_host(request: web.BaseRequest) -> None:
        assert hosts is not None
        host = request.headers.get("Host")
        if host is None:  # HTTP/1.0 without a Host: not a browser
            return
        name = _host_name(host)
        if name not in hosts and not is_loopback(name):
            raise ForbiddenHost(
                f"host {name!r} is not served without OTELSVC_AUTH_TOKEN (see OTELSVC_ALLOWED_HOSTS)",
                field="Host",
            )

    def guard(request: web.BaseRequest, path: str) -> None:
        """Bearer auth (constant-time compare) and per-client rate limits, except on probes."""
        if path in _OPEN_PATHS:
            return
        if token is not None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            # Header bytes that are not UTF-8 come as surrogates: compared as the bytes they were.
            sent = value.encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent, token):
                raise Unauthorized("missing or wrong bearer token", field="Authorization")
        if limiter is not None and request.method == "POST":
            client = request.remote or "unknown"
            wait = limiter.take(client)
            if wait > 0:
                raise RateLimited(f"rate limit exceeded for {client}", retry_after=wait)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        route_name = route(request.path)
        methods = None if route_name is None else table[route_name]
        # A path the API does not have (a browser's /favicon.ico, a scanner) is answered and timed
        # (route "unmatched"), but it is not a request to the API: it counts neither as a request nor
        # as a failure or a rejected event.
        matched = route_name is not None
        path = route_name if route_name is not None else UNMATCHED
        if matched:
            stats.requests += 1
            stats.last_request = time.time()
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in origins
        try:
            if hosts is not None:
                check_host(request)
            if request.method == "OPTIONS" and allowed:  # a preflight carries no credentials
                response: web.StreamResponse = web.Response(status=204)
            else:
                if guarded:
                    guard(request, path)
                if methods is None:
                    raise web.HTTPNotFound()
                if (handler := methods.get(request.method)) is None:
                    raise web.HTTPMethodNotAllowed(request.method, sorted(methods))
                response = await handler(request)
        except OtelServiceError as error:
            if matched:
                stats.reject(path, error.reason)
            response = _error_response(error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = exc.reason.lower().replace(" ", "_")
            if matched:
                stats.reject(path, reason)
            allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = json_response(
                {"error": reason, "message": exc.text or exc.reason}, status=exc.status, headers=allow
            )
        except Exception:
            _log.exception("unexpected_error", method=request.method, path=request.path)
            response = json_response({"error": "internal", "message": "internal error"}, status=500)
        if allowed:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.update(_CORS_HEADERS)
        elif origins:  # the answer depends on Origin for every request once CORS is configured
            response.headers["Vary"] = "Origin"
        response.headers["Server"] = "otel-service"  # not aiohttp's, which names versions
        if response.status >= 400 and matched:
            stats.failed_requests += 1
        method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
        key = (
            ("http.request.method", method),
            ("http.route", path),
            ("http.response.status_code", response.status),
        )
        with aggregates.lock:
            instruments.request_duration.record_key(key, time.perf_counter() - started)
        return response

    return handle
