"""otel-service: a telemetry sidecar for AI and ML applications.

Apps send JSON events (LLM calls, ML predictions, feedback); the sidecar turns each into correlated
OpenTelemetry metrics, a span and a structured log record, and delivers them over OTLP.
"""

from ._errors import (
    InvalidEvent,
    OtelServiceError,
    PayloadTooLarge,
    RateLimited,
    RequestRejected,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from ._events import SCHEMA_VERSION, Feedback, LabTrack, LlmCall, Prediction
from ._settings import ENVIRONMENT, Settings, SettingsError
from ._version import __version__
from .client import AsyncEventClient, EventClient

__all__ = [
    "ENVIRONMENT",
    "SCHEMA_VERSION",
    "AsyncEventClient",
    "EventClient",
    "Feedback",
    "InvalidEvent",
    "LabTrack",
    "LlmCall",
    "OtelServiceError",
    "PayloadTooLarge",
    "Prediction",
    "RateLimited",
    "RequestRejected",
    "Settings",
    "SettingsError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "__version__",
]
