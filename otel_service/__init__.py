"""otel-service: a telemetry sidecar for AI and ML applications.

Apps send JSON events (LLM calls, ML predictions, feedback); the sidecar turns each into correlated
OpenTelemetry metrics, a span and a structured log record, and delivers them over OTLP.

This module is what a client author needs: the clients and the event model. The sidecar itself is
``otel_service.cli`` (the ``otel-service`` command) and its settings ``otel_service.config``; test
doubles are in ``otel_service.testing``. Everything else is the implementation, in one package per
role of the pipeline (see docs/architecture.md).
"""

from ._version import __version__
from .client import AsyncEventClient, EventClient
from .model.events import SCHEMA_VERSION, Feedback, LabTrack, LlmCall, Prediction

__all__ = [
    "SCHEMA_VERSION",
    "AsyncEventClient",
    "EventClient",
    "Feedback",
    "LabTrack",
    "LlmCall",
    "Prediction",
    "__version__",
]
