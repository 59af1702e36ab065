"""The HTTP app end to end in-process: intake, recording, OTLP export, logs, health."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from otel_service import __version__
from otel_service.testing import OtlpReceiver

from .conftest import StartApp, point_values

LAB_EVENT = {
    "business_id": "test-business",
    "conversation_id": "conv-123",
    "session_id": "session-456",
    "response_time_ms": 1500,
    "tokens_used": 150,
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "api_cost_usd": 0.002,
    "intent_detected": "general",
    "appointment_requested": True,
    "human_handoff_requested": False,
    "appointment_booked": False,
    "user_message_length": 45,
    "ai_response_length": 120,
    "response_type": "text",
    "model_name": "gemini-1.5-flash",
    "success_rate": 1.0,
}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _prom_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def test_lab_track_renders_the_lab_metric_names(start_app: StartApp) -> None:
    """A lab /track payload yields the lab's six metric names with the lab's labels on /metrics."""
    app = await start_app()
    response = await app.client.post("/track", json=LAB_EVENT)
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "success"
    assert body["message"] == "Metrics tracked successfully"
    assert body["prometheus_updated"] is True
    assert response.headers["X-Correlation-ID"] == body["correlation_id"]
    assert app.caught_up()

    text = await (await app.client.get("/metrics")).text()
    scope = (
        f'otel_scope_name="otel_service.export",otel_scope_schema_url="",otel_scope_version="{__version__}"'
    )
    assert _prom_lines(text, "ai_requests_total") == [
        f'ai_requests_total{{business_id="test-business",intent="general",{scope},response_type="text"}} 1.0'
    ]
    assert _prom_lines(text, "ai_tokens_used_total") == [
        f'ai_tokens_used_total{{business_id="test-business",model="gemini-1.5-flash",{scope}}} 150.0'
    ]
    assert _prom_lines(text, "ai_api_cost_usd_total") == [
        f'ai_api_cost_usd_total{{business_id="test-business",{scope}}} 0.002'
    ]
    assert _prom_lines(text, "appointments_requested_total") == [
        f'appointments_requested_total{{business_id="test-business",{scope}}} 1.0'
    ]
    assert _prom_lines(text, "human_handoffs_total") == []  # not requested: no increment
    assert f'ai_response_time_seconds_bucket{{business_id="test-business",le="1.0",{scope}}} 0.0' in text
    assert f'ai_response_time_seconds_bucket{{business_id="test-business",le="2.5",{scope}}} 1.0' in text
    assert f'ai_response_time_seconds_sum{{business_id="test-business",{scope}}} 1.5' in text
    assert "# TYPE human_handoffs_total counter" not in text


async def test_genai_metrics_have_semconv_names_attributes_and_values(start_app: StartApp) -> None:
    """LLM calls produce gen_ai.client.* histograms with required attributes and error.type."""
    app = await start_app()
    events = [
        {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 250, "input_tokens": 100,
         "output_tokens": 20, "business_id": "acme"},
        {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 750, "success": False,
         "error_type": "timeout", "business_id": "acme"},
    ]  # fmt: skip
    response = await app.client.post("/v1/events", json=events)
    assert response.status == 202
    assert await response.json() == {"accepted": 2, "rejected": 0, "errors": []}
    assert app.caught_up()
    data = app.metrics()
    base = {
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
    }
    durations = point_values(data, "gen_ai.client.operation.duration")
    assert set(durations) == {frozenset(base), frozenset(base | {("error.type", "timeout")})}
    ok = durations[frozenset(base)]
    assert (ok.count, ok.sum) == (1, 0.25)
    assert list(ok.explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    tokens = point_values(data, "gen_ai.client.token.usage")
    assert {k: (v.count, v.sum) for k, v in tokens.items()} == {
        frozenset(base | {("gen_ai.token.type", "input")}): (1, 100),
        frozenset(base | {("gen_ai.token.type", "output")}): (1, 20),
    }
    cost = point_values(data, "ai.cost.usd")
    assert cost == {
        frozenset(base | {("gen_ai.token.type", "input"), ("cost.source", "computed"),
                          ("business_id", "acme")}): pytest.approx(100 * 2.5e-6),
        frozenset(base | {("gen_ai.token.type", "output"), ("cost.source", "computed"),
                          ("business_id", "acme")}): pytest.approx(20 * 10e-6),
    }  # fmt: skip
    assert point_values(data, "ai.cost.unpriced") == {
        frozenset({("gen_ai.request.model", "gpt-4o")}): 1  # the failed call had no tokens
    }
    for name in ("gen_ai.client.operation.duration", "ai.cost.usd", "ai_requests"):
        for attrs in point_values(data, name):
            keys = {key for key, _ in attrs}
            assert not keys & {"conversation_id", "gen_ai.conversation.id", "session.id", "user.id",
                               "correlation_id"}  # fmt: skip


async def test_ml_prediction_and_feedback_metrics(start_app: StartApp) -> None:
    """Predictions count by version/result/status with latency; feedback counts correctness."""
    app = await start_app()
    events = [
        {"kind": "prediction", "model": "churn", "model_version": "v2", "duration_ms": 30,
         "result": "stay", "confidence": 0.9},
        {"kind": "prediction", "model": "churn", "model_version": "v2", "duration_ms": 3000,
         "success": False},
        {"kind": "feedback", "model": "churn", "model_version": "v2", "correct": True},
        {"kind": "feedback", "model": "churn", "model_version": "v2", "correct": False},
        {"kind": "feedback", "model": "churn", "model_version": "v2", "correct": True},
    ]  # fmt: skip
    assert (await app.client.post("/v1/events", json=events)).status == 202
    assert app.caught_up()
    data = app.metrics()
    ids = {("model_name", "churn"), ("model_version", "v2")}
    assert point_values(data, "ml.predictions") == {
        frozenset(ids | {("prediction_result", "stay"), ("status", "success")}): 1,
        frozenset(ids | {("prediction_result", "none"), ("status", "error")}): 1,
    }
    latency = point_values(data, "ml.prediction.duration")[frozenset(ids)]
    assert (latency.count, latency.sum) == (2, pytest.approx(3.03))
    assert list(latency.explicit_bounds) == [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    assert point_values(data, "ml.feedback") == {
        frozenset(ids | {("correct", "true")}): 2,
        frozenset(ids | {("correct", "false")}): 1,
    }


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_logs_and_metrics_reach_an_otlp_receiver(
    receiver: OtlpReceiver, start_app: StartApp, protocol: str
) -> None:
    """Over OTLP: a backdated CLIENT span parented to the app's span, its log record, exemplars."""
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    app = await start_app(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
    end = time.time() - 5
    event = {
        "kind": "llm_call", "model": "gemini-1.5-flash", "duration_ms": 1500, "input_tokens": 12,
        "output_tokens": 3, "conversation_id": "conv-1", "user_id": "u-1", "timestamp": end,
        "attributes": {"tenant_tier": "gold"},
    }  # fmt: skip
    response = await app.client.post("/v1/events", json=event, headers={"traceparent": TRACEPARENT})
    assert response.status == 202
    answer = await response.json()
    assert answer["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert receiver.wait_for_spans(1)
    assert receiver.wait_for_logs(1)

    [span] = receiver.spans()
    assert span.name == "chat gemini-1.5-flash"
    assert span.kind == span.SPAN_KIND_CLIENT
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert span.span_id.hex() == answer["span_id"]
    assert span.end_time_unix_nano == int(end * 1e9)
    assert span.end_time_unix_nano - span.start_time_unix_nano == 1_500_000_000
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["gen_ai.request.model"].string_value == "gemini-1.5-flash"
    assert attrs["gen_ai.provider.name"].string_value == "gcp.gemini"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 12
    assert attrs["gen_ai.conversation.id"].string_value == "conv-1"
    assert attrs["user.id"].string_value == "u-1"
    assert attrs["correlation_id"].string_value == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert attrs["app.tenant_tier"].string_value == "gold"
    assert span.status.code == span.status.STATUS_CODE_UNSET

    [record] = receiver.logs()
    assert record.trace_id == span.trace_id
    assert record.span_id == span.span_id
    assert record.time_unix_nano == span.end_time_unix_nano
    body = json.loads(record.body.string_value)
    assert body["trace_id"] == span.trace_id.hex()
    assert body["span_id"] == span.span_id.hex()
    assert body["event"] == "llm_call"
    assert {kv.key: kv.value.string_value for kv in record.attributes} == {
        "correlation_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "kind": "llm_call",
    }
    assert receiver.requests["traces"][0].resource_spans[0].resource.attributes[0].key

    assert receiver.wait_for_metrics(10)
    exemplar_traces = set()
    deadline = time.monotonic() + 10
    while not exemplar_traces and time.monotonic() < deadline:
        for metric in receiver.metrics():
            if metric.name == "gen_ai.client.operation.duration":
                for point in metric.histogram.data_points:
                    exemplar_traces |= {ex.trace_id.hex() for ex in point.exemplars}
        await asyncio.sleep(0.1)
    assert exemplar_traces == {span.trace_id.hex()}


async def test_schedule_delay_spaces_out_exports(receiver: OtlpReceiver, start_app: StartApp) -> None:
    """OTEL_BSP/BLRP_SCHEDULE_DELAY: after a partial batch, the next export waits out the delay."""
    app = await start_app(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="3000",
        OTEL_BLRP_SCHEDULE_DELAY="2000",
    )
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    assert (await app.client.post("/v1/events", json=event)).status == 202
    assert await asyncio.to_thread(receiver.wait_for_spans, 1)
    started = time.monotonic()
    assert (await app.client.post("/v1/events", json=event)).status == 202
    assert not await asyncio.to_thread(receiver.wait_for_spans, 2, 1.0)
    assert await asyncio.to_thread(receiver.wait_for_spans, 2, 10.0)
    assert time.monotonic() - started >= 1.5


async def test_one_push_carries_counters_and_histograms(receiver: OtlpReceiver, start_app: StartApp) -> None:
    """In-process histograms and SDK counters of one scope arrive together, in one scope."""
    app = await start_app(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    assert (await app.client.post("/track", json=LAB_EVENT)).status == 202
    deadline = time.monotonic() + 10
    while receiver.metric_total("ai_requests") < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert receiver.metric_total("ai_requests") == 1
    assert receiver.metric_total("gen_ai.client.operation.duration") == 1
    for request in receiver.requests["metrics"]:  # both the intake's and the exporter's pushes
        scopes = [s.scope.name for rm in request.resource_metrics for s in rm.scope_metrics]
        assert len(scopes) == len(set(scopes))
    export_pushes = [
        {m.name for rm in request.resource_metrics for s in rm.scope_metrics for m in s.metrics}
        for request in receiver.requests["metrics"]
    ]
    last = [names for names in export_pushes if "ai_requests" in names][-1]
    assert {"ai_requests", "gen_ai.client.operation.duration", "otel_service.spool.items"} <= last


async def test_failed_call_span_has_error_status(receiver: OtlpReceiver, start_app: StartApp) -> None:
    """A failed LLM call's span carries error status and error.type."""
    app = await start_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
    event = {"kind": "llm_call", "model": "m", "duration_ms": 5, "success": False,
             "error_type": "rate_limited"}  # fmt: skip
    assert (await app.client.post("/v1/events", json=event)).status == 202
    assert receiver.wait_for_spans(1)
    assert receiver.wait_for_logs(1)
    [span] = receiver.spans()
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert span.status.message == "rate_limited"
    assert {kv.key: kv.value.string_value for kv in span.attributes}["error.type"] == "rate_limited"
    assert receiver.logs()[0].severity_text == "ERROR"


@pytest.mark.parametrize(
    ("headers", "event_fields", "expected"),
    [
        ({}, {"correlation_id": "from-event"}, "from-event"),
        ({"X-Correlation-ID": "from-header"}, {"correlation_id": "from-event"}, "from-event"),
        ({"X-Correlation-ID": "from-header", "traceparent": TRACEPARENT}, {}, "from-header"),
        ({"X-Request-ID": "req-7"}, {}, "req-7"),
        ({"traceparent": TRACEPARENT}, {}, "4bf92f3577b34da6a3ce929d0e0e4736"),
    ],
)
async def test_correlation_id_resolution_order(
    start_app: StartApp, headers: dict[str, str], event_fields: dict[str, str], expected: str
) -> None:
    """Event field, then X-Correlation-ID / X-Request-ID, then traceparent; echoed in the header."""
    app = await start_app()
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1, **event_fields}
    response = await app.client.post("/v1/events", json=event, headers=headers)
    assert response.status == 202
    assert response.headers["X-Correlation-ID"] == expected
    assert (await response.json())["correlation_id"] == expected
    assert app.caught_up()
    [line] = app.log_lines()
    assert orjson.loads(line)["correlation_id"] == expected


async def test_new_correlation_id_is_the_new_trace(start_app: StartApp) -> None:
    """Without any ID, the correlation ID is the new trace's ID; a bad traceparent is ignored."""
    app = await start_app()
    response = await app.client.post(
        "/v1/events",
        json={"kind": "llm_call", "model": "m", "duration_ms": 1},
        headers={"traceparent": "00-zzzz-bad"},
    )
    assert response.status == 202
    body = await response.json()
    assert body["correlation_id"] == body["trace_id"] == response.headers["X-Correlation-ID"]
    assert len(body["trace_id"]) == 32
    assert body["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_log_line_nests_user_fields_under_attributes(start_app: StartApp) -> None:
    """User attributes cannot overwrite level, timestamp or event."""
    app = await start_app()
    event = {"kind": "llm_call", "model": "m", "duration_ms": 2,
             "attributes": {"level": "debug", "event": "spoof", "timestamp": "x"}}  # fmt: skip
    assert (await app.client.post("/v1/events", json=event)).status == 202
    assert app.caught_up()
    [line] = app.log_lines()
    record = orjson.loads(line)
    assert record["level"] == "info"
    assert record["event"] == "llm_call"
    assert record["timestamp"].endswith("+00:00")
    assert record["attributes"] == {"level": "debug", "event": "spoof", "timestamp": "x"}
    assert set(record) >= {"trace_id", "span_id", "correlation_id", "service", "kind"}


async def test_batch_accepts_valid_items_and_reports_rejected_ones(start_app: StartApp) -> None:
    """Per-item results: valid items of a batch are accepted even when others are not."""
    app = await start_app()
    events: list[dict[str, Any]] = [
        {"kind": "llm_call", "model": "m", "duration_ms": 1},
        {"kind": "llm_call", "model": "m", "duration_ms": True},
        {"kind": "feedback", "model": "m", "model_version": "1"},
        {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 4},
    ]
    response = await app.client.post("/v1/events", json=events)
    assert response.status == 202
    body = await response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == 2
    assert [(e["index"], e["field"], e["error"]) for e in body["errors"]] == [
        (1, "$[1].duration_ms", "invalid_field"),
        (2, "$[2].correct", "missing_field"),
    ]
    assert app.caught_up()
    assert len(app.log_lines()) == 2
    detail = await (await app.client.get("/health/detailed")).json()
    assert detail["events"] == {
        "accepted": {"llm_call": 1, "prediction": 1},
        "rejected": {"invalid_field": 1, "missing_field": 1},
    }


async def test_ndjson_batches(start_app: StartApp) -> None:
    """NDJSON bodies are split per line, each judged on its own."""
    app = await start_app()
    body = b'{"kind":"llm_call","model":"m","duration_ms":1}\n\n{"kind":"nope"}\n{bad json\n'
    response = await app.client.post(
        "/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status == 202
    answer = await response.json()
    assert answer["accepted"] == 1
    assert [(e["index"], e["error"]) for e in answer["errors"]] == [
        (1, "invalid_field"),
        (2, "malformed_json"),
    ]


BAD_REQUESTS = [
    # (content type, body, gzip?, status, error, field)
    ("text/plain", b"{}", None, 415, "unsupported_media_type", "Content-Type"),
    ("application/json", b"", None, 400, "empty_body", "$"),
    ("application/json", b'{"business_id":"b","business_id":"c"}', None, 400, "duplicate_key",
     "$.business_id"),
    ("application/json", b'{"business_id":"b","response_time_ms":NaN,"tokens_used":1}', None, 400,
     "invalid_number", "$.response_time_ms"),
    ("application/json", b'{"business_id":"b","response_time_ms":1e999,"tokens_used":1}', None, 400,
     "invalid_number", "$.response_time_ms"),
    ("application/json", b'{"business_id":"b","response_time_ms":1,"tokens_used":9223372036854775808}',
     None, 400, "invalid_field", "$.tokens_used"),
    ("application/json", b'{"business_id":"b","response_time_ms":true,"tokens_used":1}', None, 400,
     "invalid_field", "$.response_time_ms"),
    ("application/json", b'{"business_id":"b","response_time_ms":-1,"tokens_used":1}', None, 400,
     "invalid_field", "$.response_time_ms"),
    ("application/json", b'{"business_id":"a\\ud800","response_time_ms":1,"tokens_used":1}', None,
     400, "invalid_string", "$.business_id"),
    ("application/json", b'{"business_id":"a\\u0001b","response_time_ms":1,"tokens_used":1}', None,
     400, "invalid_field", "$.business_id"),
    ("application/json", b'{"response_time_ms":1,"tokens_used":1}', None, 400, "missing_field",
     "$.business_id"),
    ("application/json", b'{"business_id":"b","response_time_ms":1,"tokens_used":1,"x":1}', None, 400,
     "unknown_field", "$.x"),
    ("application/json", b'[' * 100_000, None, 400, "too_deep", "$" + "[0]" * 32),
    ("application/json", b"\xff\xfe", None, 400, "invalid_encoding", "$"),
    ("application/json", b'{"business_id":"' + b"x" * 300 + b'","response_time_ms":1,"tokens_used":1}',
     None, 400, "invalid_field", "$.business_id"),
    ("application/json", b"not json at all", "corrupt", 400, "corrupt_body", "$"),
    ("application/json", b"{" + b" " * (3 << 20) + b"}", "gzip", 413, "payload_too_large", "$"),
]  # fmt: skip


@pytest.mark.parametrize(("content_type", "body", "encoding", "status", "error", "field"), BAD_REQUESTS)
async def test_bad_input_gets_a_4xx_naming_the_field(
    start_app: StartApp,
    content_type: str,
    body: bytes,
    encoding: str | None,
    status: int,
    error: str,
    field: str,
) -> None:
    """Each kind of bad input: a JSON 4xx naming the field, counted, and the service stays healthy."""
    app = await start_app()
    headers = {"Content-Type": content_type}
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "corrupt":
        headers["Content-Encoding"] = "gzip"
    response = await app.client.post("/track", data=body, headers=headers)
    assert response.status == status
    answer = await response.json()
    assert answer["error"] == error
    assert answer["field"] == field
    assert answer["message"]
    detail = await (await app.client.get("/health/detailed")).json()
    assert detail["events"]["rejected"] == {error: 1}
    metrics_text = await (await app.client.get("/metrics")).text()
    assert 'otel_service_events_rejected_total{endpoint="/track"' in metrics_text
    assert f'reason="{error}"' in metrics_text
    ok = await app.client.post("/track", json={"business_id": "b", "response_time_ms": 1, "tokens_used": 1})
    assert ok.status == 202


@pytest.mark.parametrize("chunks", [1, 40])
async def test_chunked_body_over_the_limit_is_413(start_app: StartApp, chunks: int) -> None:
    """A body without Content-Length beyond the limit is refused, whether it arrived whole or in parts."""
    app = await start_app(OTELSVC_MAX_BODY_BYTES="2048")
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    body = json.dumps({**event, "conversation_id": "c" * 200}).encode()
    body = b"[" + b",".join([body] * 20) + b"]"
    size = -(-len(body) // chunks)

    async def parts() -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]
            await asyncio.sleep(0)

    response = await app.client.post("/v1/events", data=parts(), headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    ok = await app.client.post("/v1/events", json=event)
    assert ok.status == 202


async def test_deflate_bodies_are_decompressed(start_app: StartApp) -> None:
    """A deflate-compressed body is accepted like a plain one."""
    app = await start_app()
    body = zlib.compress(json.dumps(LAB_EVENT).encode())
    response = await app.client.post(
        "/track", data=body, headers={"Content-Type": "application/json", "Content-Encoding": "deflate"}
    )
    assert response.status == 202


async def test_too_many_items_in_a_batch(start_app: StartApp) -> None:
    """A batch over the item limit is refused as a whole, naming the limit."""
    app = await start_app(OTELSVC_MAX_BATCH_ITEMS="3")
    events = [{"kind": "llm_call", "model": "m", "duration_ms": 1}] * 4
    response = await app.client.post("/v1/events", json=events)
    assert response.status == 400
    assert (await response.json())["error"] == "too_many_items"


async def test_too_many_attributes(start_app: StartApp) -> None:
    """More than 64 free-form attributes are refused."""
    app = await start_app()
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1,
             "attributes": {f"k{i}": i for i in range(65)}}  # fmt: skip
    response = await app.client.post("/v1/events", json=event)
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "$.attributes"


async def test_timestamps_out_of_window_are_refused(start_app: StartApp) -> None:
    """Timestamps far in the past or future, or without a zone, are refused."""
    app = await start_app()
    events = [
        {"kind": "llm_call", "model": "m", "duration_ms": 1, "timestamp": time.time() - 3 * 86400},
        {"kind": "llm_call", "model": "m", "duration_ms": 1, "timestamp": time.time() + 3600},
        {"kind": "llm_call", "model": "m", "duration_ms": 1, "timestamp": "2026-01-01T00:00:00"},
    ]
    body = await (await app.client.post("/v1/events", json=events)).json()
    assert [(e["field"], e["error"]) for e in body["errors"]] == [
        ("$[0].timestamp", "timestamp_out_of_range"),
        ("$[1].timestamp", "timestamp_out_of_range"),
        ("$[2].timestamp", "invalid_field"),
    ]


async def test_business_id_cardinality_is_capped_and_counted(start_app: StartApp) -> None:
    """Beyond the tenant cap, business_id becomes _OTHER and the overflow is counted."""
    app = await start_app(OTELSVC_MAX_TENANTS="2")
    events = [{"kind": "llm_call", "model": "m", "duration_ms": 1, "business_id": f"b{i}"} for i in range(5)]
    assert (await app.client.post("/v1/events", json=events)).status == 202
    assert app.caught_up()
    data = app.metrics()
    requests = point_values(data, "ai_requests")
    assert sorted(dict(k)["business_id"] for k in requests) == ["_OTHER", "b0", "b1"]
    assert requests[frozenset({("business_id", "_OTHER"), ("intent", "unknown"),
                               ("response_type", "unknown")})] == 3  # fmt: skip
    assert (
        point_values(data, "otel_service.attribute.overflow")[frozenset({("attribute", "business_id")})] == 3
    )


async def test_health_ready_and_detailed(start_app: StartApp) -> None:
    """Probes answer with the lab's detailed-health fields and the export state."""
    app = await start_app()
    assert (await app.client.get("/health")).status == 200
    ready = await app.client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    await app.client.post("/track", json=LAB_EVENT)
    await app.client.post("/track", data=b"{", headers={"Content-Type": "application/json"})
    detail = await (await app.client.get("/health/detailed")).json()
    assert set(detail) >= {"status", "service", "version", "timestamp", "uptime", "system",
                           "requests", "events", "export"}  # fmt: skip
    assert set(detail["uptime"]) == {"seconds", "hours", "days", "started_at"}
    assert set(detail["system"]) == {"memory_usage_mb", "cpu_percent", "process_id"}
    assert detail["requests"]["total"] == 5
    assert detail["requests"]["failed"] == 1
    assert detail["requests"]["error_rate_percent"] == 20.0
    assert detail["requests"]["last_request"]
    assert detail["export"]["enabled"] is False
    assert set(detail["export"]["spool"]) == {"segments", "items", "bytes", "oldest_age_seconds"}


async def test_ready_turns_not_ready_before_the_spool_bound(start_app: StartApp) -> None:
    """At 80 % of the spool bound /ready says not ready; at the bound intake answers 503."""
    app = await start_app(OTELSVC_SPOOL_MAX_BYTES="65536", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1, "attributes": {"pad": "x" * 4000}}
    statuses = []
    for _ in range(20):
        statuses.append((await app.client.post("/v1/events", json=event)).status)
        await asyncio.sleep(0.26)  # let the intake re-measure the spool
        if statuses[-1] == 503:
            break
    assert statuses[-1] == 503
    assert set(statuses[:-1]) == {202}
    refused = await app.client.post("/v1/events", json=event)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "10"
    assert (await refused.json())["error"] == "spool_full"
    ready = await app.client.get("/ready")
    assert ready.status == 503


async def test_openapi_is_served_and_matches_the_repository(start_app: StartApp) -> None:
    """The served OpenAPI document equals the committed openapi.json (run `make openapi`)."""
    from pathlib import Path

    app = await start_app()
    served = await (await app.client.get("/openapi.json")).json()
    committed = json.loads((Path(__file__).parent.parent / "openapi.json").read_text())
    assert served == committed
    assert set(served["paths"]) >= {"/track", "/v1/events", "/metrics", "/health", "/ready"}


async def test_auth_token_is_required_when_configured(start_app: StartApp) -> None:
    """With a token set, intake needs the bearer token; probes stay open."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    assert (await app.client.post("/track", json=LAB_EVENT)).status == 401
    wrong = await app.client.post("/track", json=LAB_EVENT, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await app.client.post("/track", json=LAB_EVENT, headers={"Authorization": "Bearer s3cret"})
    assert right.status == 202
    assert (await app.client.get("/health")).status == 200


async def test_rate_limit_answers_429_with_retry_after(start_app: StartApp) -> None:
    """Per-client rate limit: over it, 429 with Retry-After."""
    app = await start_app(OTELSVC_RATE_LIMIT="2")
    statuses = [(await app.client.post("/track", json=LAB_EVENT)).status for _ in range(3)]
    assert statuses == [202, 202, 429]


async def test_unknown_route_and_method_are_json_errors(start_app: StartApp) -> None:
    """aiohttp's own 404/405 are JSON too."""
    app = await start_app()
    missing = await app.client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong = await app.client.get("/track")
    assert wrong.status == 405
    assert (await wrong.json())["error"] == "method_not_allowed"


async def test_get_routes_answer_head_without_a_body(start_app: StartApp) -> None:
    """HEAD is served wherever GET is, with GET's status and headers and no body."""
    app = await start_app()
    response = await app.client.head("/health")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert await response.read() == b""
    assert (await app.client.head("/track")).status == 405


async def test_request_durations_name_known_routes_and_methods_only(start_app: StartApp) -> None:
    """Request-duration labels come from closed sets: unknown paths are "unmatched", odd methods "_OTHER"."""
    app = await start_app()
    assert (await app.client.get("/no/such/path")).status == 404
    odd = await app.client.request("PROPFIND", "/track")
    assert odd.status == 405
    assert odd.headers["Allow"] == "POST"
    assert (await odd.json())["error"] == "method_not_allowed"
    text = await (await app.client.get("/metrics")).text()
    counts = {
        line.split("{", 1)[1].rsplit("}", 1)[0]
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{")
    }
    assert any('http_route="unmatched"' in c and 'http_response_status_code="404"' in c for c in counts)
    assert any('http_request_method="_OTHER"' in c and 'http_route="/track"' in c for c in counts)
    assert "no/such" not in text
    assert "PROPFIND" not in text


async def _raw_exchange(port: int, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Send ``head``, wait up to 2 s for an interim answer, then send ``body``; (interim, final)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        try:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        except TimeoutError:
            interim = b""
        if interim.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            await writer.drain()
            final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        else:
            final, interim = interim, b""
        return interim, final
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body(start_app: StartApp) -> None:
    """Expect: 100-continue gets its interim answer, then 202; 413 before an oversized body; else 417."""
    app = await start_app()
    port = app.client.port
    assert port is not None
    body = json.dumps(LAB_EVENT).encode()

    def head(expect: str, length: int) -> bytes:
        return (
            f"POST /track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Expect: {expect}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    interim, final = await _raw_exchange(port, head("100-continue", len(body)), body)
    assert interim.startswith(b"HTTP/1.1 100 Continue"), (interim, final)
    assert final.startswith(b"HTTP/1.1 202"), final
    interim, final = await _raw_exchange(port, head("100-continue", 10**9), b"")
    assert (interim, final[:12]) == (b"", b"HTTP/1.1 413")
    interim, final = await _raw_exchange(port, head("something-else", len(body)), body)
    assert (interim, final[:12]) == (b"", b"HTTP/1.1 417")


async def test_a_batch_answers_with_the_requests_correlation_id(start_app: StartApp) -> None:
    """A batch's X-Correlation-ID is the trace its parentless events share, whatever its first item holds."""
    app = await start_app()
    own_trace = {
        "kind": "llm_call",
        "model": "m",
        "duration_ms": 1,
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
    }
    plain = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    response = await app.client.post("/v1/events", json=[own_trace, plain, plain])
    assert response.status == 202
    header = response.headers["X-Correlation-ID"]
    assert app.caught_up()
    lines = [orjson.loads(line) for line in app.log_lines()]
    assert [(line["trace_id"], line["correlation_id"]) for line in lines] == [
        ("a" * 32, "a" * 32),
        (header, header),
        (header, header),
    ]


async def test_a_refused_batch_still_answers_with_a_correlation_id(start_app: StartApp) -> None:
    """Every item refused: the 400 answer carries the request's correlation ID (the header's here)."""
    app = await start_app()
    response = await app.client.post(
        "/v1/events", json=[{"kind": "llm_call"}], headers={"X-Request-ID": "r-1"}
    )
    assert response.status == 400
    assert response.headers["X-Correlation-ID"] == "r-1"


async def test_the_parents_sampled_flag_and_tracestate_reach_the_span(
    receiver: OtlpReceiver, start_app: StartApp
) -> None:
    """traceparent's sampled flag and tracestate are carried onto the span, and the flag onto the log."""
    app = await start_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
    unsampled = TRACEPARENT[:-2] + "00"
    for correlation, headers in (
        ("unsampled", {"traceparent": unsampled, "tracestate": "vendor=opaque,other=1"}),
        ("sampled", {"traceparent": TRACEPARENT, "tracestate": "v=" + "a" * 600}),
        ("root", {}),
    ):
        event = {"kind": "llm_call", "model": "m", "duration_ms": 1, "correlation_id": correlation}
        assert (await app.client.post("/v1/events", json=event, headers=headers)).status == 202
    assert receiver.wait_for_spans(3)
    assert receiver.wait_for_logs(3)
    spans = {
        next(kv.value.string_value for kv in span.attributes if kv.key == "correlation_id"): span
        for span in receiver.spans()
    }
    assert {name: (span.flags, span.trace_state) for name, span in spans.items()} == {
        "unsampled": (0x300, "vendor=opaque,other=1"),  # remote parent known (bits 8, 9); not sampled
        "sampled": (0x301, ""),  # a tracestate over 512 characters is dropped
        "root": (0x101, ""),
    }
    flags = {
        next(kv.value.string_value for kv in record.attributes if kv.key == "correlation_id"): record.flags
        for record in receiver.logs()
    }
    assert flags == {"unsampled": 0, "sampled": 1, "root": 1}
