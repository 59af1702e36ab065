"""The hand-written OTLP wire encoding, checked by decoding with the generated protobuf classes."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_service.export import otlp as _otlp

ATTRS = {
    "s": "text",
    "long": "x" * 300,
    "unicode": "héllo ✓",
    "t": True,
    "f": False,
    "i": 42,
    "neg": -7,
    "big": 2**62,
    "two_bytes": 420,
    "three_bytes": 300_000,
    "k" * 130: 5,
    "d": 0.25,
    "e" * 130: -1.5,  # a double whose KeyValue needs a two-byte length
    "skipped": None,
}
EXPECTED_ATTRS = [
    KeyValue(key="s", value=AnyValue(string_value="text")),
    KeyValue(key="long", value=AnyValue(string_value="x" * 300)),
    KeyValue(key="unicode", value=AnyValue(string_value="héllo ✓")),
    KeyValue(key="t", value=AnyValue(bool_value=True)),
    KeyValue(key="f", value=AnyValue(bool_value=False)),
    KeyValue(key="i", value=AnyValue(int_value=42)),
    KeyValue(key="neg", value=AnyValue(int_value=-7)),
    KeyValue(key="big", value=AnyValue(int_value=2**62)),
    KeyValue(key="two_bytes", value=AnyValue(int_value=420)),
    KeyValue(key="three_bytes", value=AnyValue(int_value=300_000)),
    KeyValue(key="k" * 130, value=AnyValue(int_value=5)),
    KeyValue(key="d", value=AnyValue(double_value=0.25)),
    KeyValue(key="e" * 130, value=AnyValue(double_value=-1.5)),
]


def test_traces_request_decodes_to_the_expected_message() -> None:
    """A span with parent, error status and every attribute type decodes field for field."""
    encoded = _otlp.traces_request(
        _otlp.resource({"service.name": "svc"}),
        _otlp.scope("otel_service", "1.2.3"),
        [
            _otlp.span(
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
                span_id="00f067aa0ba902b7",
                parent_span_id="1111111111111111",
                head=_otlp.span_head("chat gpt-4o", _otlp.KIND_CLIENT),
                start_ns=1_700_000_000_000_000_000,
                end_ns=1_700_000_001_500_000_000,
                encoded_attributes=_otlp.span_attributes(dict(list(ATTRS.items())[:4])),
                attributes=dict(list(ATTRS.items())[4:]),
                status=_otlp.span_status("timeout"),
            ),
            _otlp.span(
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
                span_id="2222222222222222",
                parent_span_id=None,
                head=_otlp.span_head("predict churn", _otlp.KIND_INTERNAL),
                start_ns=1,
                end_ns=2,
                attributes={},
                status=_otlp.span_status(None),
            ),
        ],
    )
    expected = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value="svc"))]
                ),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="otel_service", version="1.2.3"),
                        spans=[
                            Span(
                                trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                                span_id=bytes.fromhex("00f067aa0ba902b7"),
                                parent_span_id=bytes.fromhex("1111111111111111"),
                                name="chat gpt-4o",
                                kind=Span.SPAN_KIND_CLIENT,
                                start_time_unix_nano=1_700_000_000_000_000_000,
                                end_time_unix_nano=1_700_000_001_500_000_000,
                                attributes=EXPECTED_ATTRS,
                                status=Status(code=Status.STATUS_CODE_ERROR, message="timeout"),
                                flags=0x301,
                            ),
                            Span(
                                trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                                span_id=bytes.fromhex("2222222222222222"),
                                name="predict churn",
                                kind=Span.SPAN_KIND_INTERNAL,
                                start_time_unix_nano=1,
                                end_time_unix_nano=2,
                                flags=0x101,
                            ),
                        ],
                    )
                ],
            )
        ]
    )
    assert ExportTraceServiceRequest.FromString(encoded) == expected


def test_logs_request_decodes_to_the_expected_message() -> None:
    """A log record with trace context, severity and event name decodes field for field."""
    body = '{"event":"llm_call","msg":"' + "y" * 200 + '"}'
    encoded = _otlp.logs_request(
        _otlp.resource({}),
        _otlp.scope("s", "v"),
        [
            _otlp.log_record(
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
                span_id="00f067aa0ba902b7",
                time_ns=10,
                observed_ns=20,
                head=_otlp.log_head(_otlp.SEVERITY_ERROR, "otel_service.llm_call", {"kind": "llm_call"}),
                body=body.encode(),
                attributes={"correlation_id": "c-1"},
            )
        ],
    )
    expected = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(),
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name="s", version="v"),
                        log_records=[
                            LogRecord(
                                time_unix_nano=10,
                                observed_time_unix_nano=20,
                                severity_number=17,  # type: ignore[arg-type]
                                severity_text="ERROR",
                                body=AnyValue(string_value=body),
                                attributes=[
                                    KeyValue(key="kind", value=AnyValue(string_value="llm_call")),
                                    KeyValue(key="correlation_id", value=AnyValue(string_value="c-1")),
                                ],
                                flags=1,
                                trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                                span_id=bytes.fromhex("00f067aa0ba902b7"),
                                event_name="otel_service.llm_call",
                            )
                        ],
                    )
                ],
            )
        ]
    )
    assert ExportLogsServiceRequest.FromString(encoded) == expected


def test_large_batches_encode_lengths_beyond_one_byte() -> None:
    """Requests over 2 MB (multi-byte varint lengths) still decode with every span."""
    spans = [
        _otlp.span(
            trace_id=f"{i:032x}", span_id=f"{i + 1:016x}", parent_span_id=None,
            head=_otlp.span_head("n" * 100, 1), start_ns=i, end_ns=i + 1, attributes={"a": "v" * 1000},
        )
        for i in range(2000)
    ]  # fmt: skip
    decoded = ExportTraceServiceRequest.FromString(
        _otlp.traces_request(_otlp.resource({}), _otlp.scope("s", "v"), spans)
    )
    got = decoded.resource_spans[0].scope_spans[0].spans
    assert len(got) == 2000
    assert got[1999].attributes[0].value.string_value == "v" * 1000
