"""Errors the service raises; one middleware turns them into JSON HTTP answers.

OtelServiceError
├── RequestRejected            (4xx: the client sent something we refuse)
│   ├── InvalidEvent           (400/422: a field is wrong; names the field)
│   ├── InvalidParameter       (400: a query or path parameter is wrong; names it)
│   ├── PayloadTooLarge        (413)
│   ├── UnsupportedMediaType   (415)
│   ├── Unauthorized           (401)
│   ├── ForbiddenHost          (403: a Host that is not ours, without a token)
│   └── RateLimited            (429, with Retry-After)
└── Unavailable                (503, with Retry-After: spool full, shutting down)
"""

from __future__ import annotations

__all__ = [
    "ExpectationFailed",
    "ForbiddenHost",
    "InvalidEvent",
    "InvalidParameter",
    "OtelServiceError",
    "PayloadTooLarge",
    "RateLimited",
    "RequestRejected",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


class OtelServiceError(Exception):
    """Base of every error this package raises on purpose."""

    status = 500
    #: Low-cardinality reason, used as the ``reason`` attribute of rejection counters.
    reason = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        """The JSON body of the HTTP answer."""
        body: dict[str, object] = {"error": self.reason, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class RequestRejected(OtelServiceError):
    """The request is refused because of what the client sent."""

    status = 400
    reason = "bad_request"


class InvalidEvent(RequestRejected):
    """An event (or the request body) failed validation."""

    def __init__(self, message: str, *, field: str | None = None, reason: str = "invalid") -> None:
        super().__init__(message, field=field)
        self.reason = reason


class InvalidParameter(RequestRejected):
    """A query or path parameter (of ``/analytics``, say) is wrong; ``field`` names it."""

    reason = "invalid_parameter"


class PayloadTooLarge(RequestRejected):
    status = 413
    reason = "payload_too_large"


class UnsupportedMediaType(RequestRejected):
    status = 415
    reason = "unsupported_media_type"


class ExpectationFailed(RequestRejected):
    status = 417
    reason = "expectation_failed"


class Unauthorized(RequestRejected):
    status = 401
    reason = "unauthorized"


class ForbiddenHost(RequestRejected):
    """A request for another host name: without a token, only loopback names and the configured ones
    are served, so a DNS-rebinding page cannot reach the sidecar through the browser."""

    status = 403
    reason = "host_not_allowed"


class RateLimited(RequestRejected):
    status = 429
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(OtelServiceError):
    """The service cannot take the event now; the client should retry later."""

    status = 503

    def __init__(self, message: str, *, reason: str, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
