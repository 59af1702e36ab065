"""OTLP protobuf for spans and log records built straight from envelopes (no SDK span objects).

The events describe calls that already happened elsewhere, with IDs fixed at intake, so spans are
written as finished records: backdated, parented to the app's span, identical on replay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

__all__ = [
    "SEVERITY_ERROR",
    "SEVERITY_INFO",
    "Value",
    "key_values",
    "log_record",
    "logs_request",
    "resource_proto",
    "span",
    "traces_request",
]

Value = str | bool | int | float
SEVERITY_INFO = 9
SEVERITY_ERROR = 17
KIND_INTERNAL = Span.SPAN_KIND_INTERNAL
KIND_CLIENT = Span.SPAN_KIND_CLIENT


def _any(value: Value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def key_values(attributes: Mapping[str, Value]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any(value)) for key, value in attributes.items()]


def resource_proto(attributes: Mapping[str, Value]) -> Resource:
    return Resource(attributes=key_values(attributes))


def span(
    *,
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Value],
    error: str | None,
) -> Span:
    return Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        parent_span_id=bytes.fromhex(parent_span_id) if parent_span_id else b"",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=key_values(attributes),
        status=Status(code=Status.STATUS_CODE_ERROR, message=error) if error else None,
        # Sampled, and "is the parent remote" known: it is whenever the app sent a parent.
        flags=0x101 | (0x200 if parent_span_id else 0),
    )


def log_record(
    *,
    trace_id: str,
    span_id: str,
    time_ns: int,
    observed_ns: int,
    severity: int,
    body: str,
    event_name: str,
    attributes: Mapping[str, Value],
) -> LogRecord:
    return LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=observed_ns,
        severity_number=severity,  # type: ignore[arg-type]
        severity_text="ERROR" if severity >= SEVERITY_ERROR else "INFO",
        body=AnyValue(string_value=body),
        attributes=key_values(attributes),
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        flags=1,
        event_name=event_name,
    )


def traces_request(
    resource: Resource, scope: InstrumentationScope, spans: Sequence[Span]
) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=spans)])]
    )


def logs_request(
    resource: Resource, scope: InstrumentationScope, records: Sequence[LogRecord]
) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=records)])
        ]
    )
