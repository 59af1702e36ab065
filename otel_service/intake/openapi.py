"""The OpenAPI 3.1 document of the HTTP API, generated from the event model."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from .._version import __version__
from ..model.events import SCHEMA_VERSION, Feedback, LabTrack, LlmCall, Prediction
from .analytics import ANALYTICS_SCHEMA, analytics_paths

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Low-cardinality reason code."},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "JSON path of the offending field."},
    },
}

_TIMESTAMP = {"type": "string", "format": "date-time"}
#: ``GET /health``: the lab's fields, the version, and why not when unhealthy.
_HEALTH = {
    "type": "object",
    "required": ["status", "service", "version", "timestamp", "monitoring"],
    "properties": {
        "status": {"enum": ["healthy", "unhealthy"]},
        "service": {"type": "string", "description": "OTEL_SERVICE_NAME."},
        "version": {"type": "string"},
        "timestamp": _TIMESTAMP,
        "monitoring": {"const": "prometheus", "description": "The lab's field: metrics at /metrics."},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}
#: ``POST /refresh-metrics``: the lab's answer.
_REFRESH = {
    "type": "object",
    "required": ["status", "message", "timestamp"],
    "properties": {"status": {"const": "success"}, "message": {"type": "string"}, "timestamp": _TIMESTAMP},
}


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid event or body; the error names the field.",
        401: "Missing or wrong bearer token.",
        413: "Body too large (after decompression).",
        415: "Content type not accepted.",
        429: "Rate limited; see Retry-After.",
        503: "Export spool full or shutting down; see Retry-After. Nothing accepted is lost.",
    }
    return {
        str(code): {
            "description": text[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


@cache
def openapi_document() -> dict[str, Any]:
    (track, native), components = msgspec.json.schema_components(
        [LabTrack, LlmCall | Prediction | Feedback], ref_template="#/components/schemas/{name}"
    )
    components["Error"] = _ERROR
    components["Health"] = _HEALTH
    components["Refresh"] = _REFRESH
    components["Analytics"] = ANALYTICS_SCHEMA
    components["BatchResult"] = {
        "type": "object",
        "required": ["accepted", "rejected", "errors"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"type": "object", "properties": {"index": {"type": "integer"}}},
                    ]
                },
            },
            "correlation_id": {"type": "string"},
            "trace_id": {"type": "string"},
            "span_id": {"type": "string"},
        },
    }
    correlation_header = {
        "X-Correlation-ID": {
            "description": "The request's correlation ID.",
            "schema": {"type": "string"},
        }
    }
    trace_headers = [
        {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"}},
        {
            "name": "X-Correlation-ID",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
        },
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "otel-service",
            "version": __version__,
            "description": f"Event schema version {SCHEMA_VERSION}.",
        },
        "paths": {
            "/track": {
                "post": {
                    "summary": "Track one LLM call (the lab's flat schema).",
                    "parameters": trace_headers,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": track}},
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted and owned by the sidecar.",
                            "headers": correlation_header,
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 413, 415, 429, 503),
                    },
                }
            },
            "/refresh-metrics": {
                "post": {
                    "summary": "The lab's metrics refresh: nothing to rebuild, totals are continuous.",
                    "description": "The lab's client calls it after every /track. Any body (the lab "
                    'sends {"trigger": "new_metrics"}) is ignored.',
                    "responses": {"200": _json("Nothing to do.", "Refresh"), **_errors(401, 429)},
                }
            },
            "/v1/events": {
                "post": {
                    "summary": "Send one event, a JSON array of events, or NDJSON.",
                    "parameters": trace_headers,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [native, {"type": "array", "items": native}]}
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "At least one event accepted; rejected items listed.",
                            "headers": correlation_header,
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}
                            },
                        },
                        **_errors(400, 401, 413, 415, 429, 503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text.",
                    "responses": {"200": {"description": "Metrics."}},
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness, with the lab's health fields.",
                    "responses": {
                        "200": _json("Alive.", "Health"),
                        "503": _json("The export side is down and cannot be started again.", "Health"),
                    },
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness (export path included).",
                    "responses": {
                        "200": {"description": "Ready."},
                        "503": {"description": "Not ready."},
                    },
                }
            },
            "/health/detailed": {
                "get": {
                    "summary": "Uptime, resources, counts, export state.",
                    "responses": {"200": {"description": "Details."}},
                }
            },
            "/favicon.ico": {
                "get": {
                    "summary": "The dashboard's icon (SVG).",
                    "responses": {"200": {"description": "Icon.", "content": {"image/svg+xml": {}}}},
                }
            },
            **analytics_paths({"$ref": "#/components/schemas/Error"}),
        },
        "components": {"schemas": components},
    }
