"""The recorder: each event's own values on top of the per-plan (low-cardinality) part it shares."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otel_service.export.recorder import Recorder
from otel_service.export.recorder import plans as _plans
from otel_service.model.pricing import load_price_table
from otel_service.telemetry.instruments import WorkerInstruments
from otel_service.telemetry.logs import EventLogger
from otel_service.telemetry.providers import Metrics, create_metrics, create_resource, shutdown_quietly

from .conftest import envelope, make_settings, point_values


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[Metrics]:
    settings = make_settings(tmp_path)
    created = create_metrics(settings, create_resource(settings, "test"), scope="otel_service.export")
    yield created
    shutdown_quietly(created.provider, 1.0)


def make_recorder(metrics: Metrics, log: io.BytesIO, **limits: int) -> Recorder:
    return Recorder(
        WorkerInstruments.create(metrics.aggregates),
        prices=load_price_table(),
        logger=EventLogger(log),
        service_name="svc",
        **limits,
    )


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def values(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    data = metrics.reader.snapshot()
    assert data is not None
    return point_values(data, name)


def test_events_sharing_a_plan_keep_their_own_values(metrics: Metrics) -> None:
    """Same labels, different values: every span, log line and metric carries its own event's."""
    log = io.BytesIO()
    recorder = make_recorder(metrics, log)
    envelopes = [
        envelope(0, input_tokens=10, output_tokens=1, conversation_id="a", duration_ms=100),
        envelope(1, input_tokens=20, output_tokens=2, user_id="u", duration_ms=300),
    ]
    recorded = recorder.record(envelopes)
    spans = [Span.FromString(item) for item in recorded.spans]
    first, second = (attrs(span) for span in spans)
    assert (first["gen_ai.usage.input_tokens"], second["gen_ai.usage.input_tokens"]) == (10, 20)
    assert first["gen_ai.conversation.id"] == "a"
    assert "gen_ai.conversation.id" not in second
    assert second["user.id"] == "u"
    assert "user.id" not in first
    assert (first["correlation_id"], second["correlation_id"]) == ("c-0", "c-1")
    assert first["gen_ai.request.model"] == second["gen_ai.request.model"] == "gpt-4o"
    assert [s.end_time_unix_nano - s.start_time_unix_nano for s in spans] == [100_000_000, 300_000_000]
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(line["input_tokens"], line["correlation_id"]) for line in lines] == [(10, "c-0"), (20, "c-1")]
    assert lines[0]["conversation_id"] == "a"
    assert "user_id" not in lines[0]
    logs = [LogRecord.FromString(item) for item in recorded.logs]
    assert [json.loads(r.body.string_value)["span_id"] for r in logs] == [f"{1:016x}", f"{2:016x}"]
    assert [{kv.key: kv.value.string_value for kv in r.attributes}["correlation_id"] for r in logs] == [
        "c-0",
        "c-1",
    ]
    [duration] = values(metrics, "gen_ai.client.operation.duration").values()
    assert (duration.count, duration.sum) == (2, pytest.approx(0.4))
    assert sum(values(metrics, "ai_tokens_used").values()) == 33


def test_cost_source_and_status_follow_each_event(metrics: Metrics) -> None:
    """Reported, computed and unpriced cost, success and failure: one model, four different plans."""
    recorder = make_recorder(metrics, io.BytesIO())
    recorded = recorder.record(
        [
            envelope(0, cost_usd=0.5),
            envelope(1, input_tokens=1000),
            envelope(2),
            envelope(3, success=False, error_type="timeout"),
        ]
    )
    spans = [Span.FromString(item) for item in recorded.spans]
    assert [attrs(s)["app.cost_source"] for s in spans] == ["reported", "computed", "unpriced", "unpriced"]
    assert [attrs(s).get("error.type") for s in spans] == [None, None, None, "timeout"]
    assert [s.status.code for s in spans] == [0, 0, 0, Status.STATUS_CODE_ERROR]
    assert sum(values(metrics, "ai.cost.unpriced").values()) == 2
    costs = values(metrics, "ai.cost.usd")
    assert {dict(k)["cost.source"] for k in costs} == {"reported", "computed"}


def test_overflowing_labels_are_counted_for_every_event(metrics: Metrics) -> None:
    """A tenant beyond the cap becomes _OTHER and counts as an overflow each time, batch after batch."""
    recorder = make_recorder(metrics, io.BytesIO(), max_tenants=1)
    recorder.record([envelope(n, business_id=tenant) for n, tenant in enumerate(["b0", "b1", "b1"])])
    recorder.record([envelope(3, business_id="b1"), envelope(4, business_id="b0")])
    overflow = values(metrics, "otel_service.attribute.overflow")
    assert overflow == {frozenset({("attribute", "business_id")}): 3}
    requests = {dict(k)["business_id"]: v for k, v in values(metrics, "ai_requests").items()}
    assert requests == {"b0": 2, "_OTHER": 3}


def test_plan_cache_starts_over_when_full(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    """More distinct plans than the cache holds: totals are the same as with every plan cached."""
    monkeypatch.setattr(_plans, "_MAX_PLANS", 2)
    recorder = make_recorder(metrics, io.BytesIO())
    for _ in range(3):
        recorder.record([envelope(n, model=f"m{n % 5}", input_tokens=n) for n in range(10)])
    by_model = {dict(k)["model"]: v for k, v in values(metrics, "ai_tokens_used").items()}
    assert by_model == {f"m{m}": 3 * (m + m + 5) for m in range(5) if m + m + 5}
    assert len(recorder._plans._llm) <= 2
