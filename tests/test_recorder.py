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
from otel_service.export.recorder import recorder as _recorder
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


def make_recorder(metrics: Metrics, log: io.BytesIO, **limits: Any) -> Recorder:
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


class _Clock:
    """The wall clock the recorder's label guards read, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        monkeypatch.setattr(_recorder.time, "time", lambda: self.now)


def _by_tenant(metrics: Metrics, name: str = "ai_requests") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in values(metrics, name).items():
        tenant = dict(key)["business_id"]
        found[tenant] = found.get(tenant, 0) + getattr(value, "count", value)
    return found


def test_a_tenant_unseen_for_the_idle_time_gives_its_place_up(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the cap, a tenant idle past the idle time ages out: its series merge into _OTHER, totals whole."""
    clock = _Clock(monkeypatch)
    recorder = make_recorder(metrics, io.BytesIO(), max_tenants=2, label_idle_seconds=100)
    recorder.record([envelope(0, business_id="old"), envelope(1, business_id="old")])
    clock.now += 50
    recorder.record([envelope(2, business_id="busy")])
    clock.now += 70  # old: unseen for 120 s; busy: for 70 s
    recorder.record([envelope(3, business_id="new"), envelope(4, business_id="busy")])
    assert _by_tenant(metrics) == {"_OTHER": 2, "busy": 2, "new": 1}
    assert _by_tenant(metrics, "ai_response_time") == {"_OTHER": 2, "busy": 2, "new": 1}
    aged = values(metrics, "otel_service.attribute.aged_out")
    assert aged == {frozenset({("attribute", "business_id")}): 1}
    assert "otel_service.attribute.overflow" not in {n for n, _ in _names(metrics)}


def test_after_a_flood_of_junk_tenants_a_real_one_gets_its_label_back(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 junk tenants fill the cap; once they go quiet for the idle time, a real tenant is itself."""
    clock = _Clock(monkeypatch)
    recorder = make_recorder(metrics, io.BytesIO(), max_tenants=50, label_idle_seconds=600)
    recorder.record([envelope(n, business_id=f"junk-{n}") for n in range(1000)])
    recorder.record([envelope(1000, business_id="real")])
    assert _by_tenant(metrics)["_OTHER"] == 951
    clock.now += 601
    recorder.record([envelope(1001, business_id="real")])
    tenants = _by_tenant(metrics)
    assert tenants["real"] == 1
    assert sum(tenants.values()) == 1002  # every event still counted once
    assert len(tenants) == 2  # the junk tenants' series merged into _OTHER: memory is bounded
    aged = values(metrics, "otel_service.attribute.aged_out")
    assert aged == {frozenset({("attribute", "business_id")}): 50}


def test_kept_tenants_and_models_are_labels_whatever_the_cap(metrics: Metrics) -> None:
    """Operator-named tenants and models are always kept, and do not use up the cap."""
    recorder = make_recorder(
        metrics,
        io.BytesIO(),
        max_tenants=1,
        max_label_values=1,
        kept_labels={"business_id": ["vip"], "model": ["gpt-4o"]},
    )
    recorder.record(
        [
            envelope(0, business_id="first", model="m1"),
            envelope(1, business_id="vip", model="gpt-4o"),
            envelope(2, business_id="second", model="m2"),
        ]
    )
    assert _by_tenant(metrics) == {"first": 1, "vip": 1, "_OTHER": 1}
    models = {dict(k)["gen_ai.request.model"] for k in values(metrics, "gen_ai.client.operation.duration")}
    assert models == {"m1", "gpt-4o", "_OTHER"}


def test_admitted_labels_carry_on_after_a_restart(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guards' state is saved with the totals: a restarted recorder keeps the same tenants."""
    clock = _Clock(monkeypatch)
    first = make_recorder(metrics, io.BytesIO(), max_tenants=1, label_idle_seconds=100)
    first.record([envelope(0, business_id="a")])
    state = json.loads(json.dumps(first.guards_state()))
    clock.now += 50
    second = make_recorder(metrics, io.BytesIO(), max_tenants=1, label_idle_seconds=100)
    second.restore_guards(state)
    assert second._plans.llm(envelope(1, business_id="b").event).business == "_OTHER"
    clock.now += 60  # "a" last seen 110 s ago, as the saved time says
    assert second.record([envelope(2, business_id="b")]) is not None
    assert second._plans.llm(envelope(3, business_id="b").event).business == "b"


def _names(metrics: Metrics) -> list[tuple[str, Any]]:
    data = metrics.reader.snapshot()
    assert data is not None
    return [(m.name, m) for r in data.resource_metrics for sc in r.scope_metrics for m in sc.metrics]
