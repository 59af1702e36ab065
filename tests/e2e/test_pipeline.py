"""End-to-end: events sent to the sidecar over HTTP, checked in what Prometheus, Jaeger (traces),
VictoriaLogs (logs) and Alertmanager answer through their own HTTP APIs (the real binaries, the
repository's configs). Loki and Tempo (AGPL-3.0) are never run here; the collector feeds Jaeger and
VictoriaLogs with the same exporters it uses for them, only the endpoints differ.

The tests share one stack and run in file order; each uses its own business IDs / model names, so
their exact counts do not depend on each other:

    e2e-main, e2e-lab, e2e-misc, e2e-ml   the main traffic (GenAI, lab /track, ML, feedback, drift)
    e2e-cardinality                       201 distinct intents: the cardinality guard
    e2e-burst, e2e-largest                12,000 events at once; the largest event accepted
    e2e-logs-outage, e2e-traces-outage, e2e-collector-outage
    e2e-alerts (e2e-flaky-model, e2e-fraud)  induced error rates
    e2e-crash                             kill -9 of the sidecar under load

The last test checks every recording rule and dashboard query against all of that traffic, so it
needs the whole module (``-k`` on it alone reports queries without data).

Prometheus keeps prometheus.yml's 10 s scrape and rule evaluation intervals (nothing shortened): the
suite fits its time budget with them. The sidecar pushes metrics every 2 s and exports spans and logs
after 200 ms (OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP/BLRP_SCHEDULE_DELAY), which only makes the tests
wait less.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import pytest
import yaml

from tools.stack import REPO, HttpResponse, LogLine, Span, Stack, StackError, http_request, logsql_quote

from .readme import runbooks

pytestmark = pytest.mark.e2e

T = TypeVar("T")

#: LogsQL stream filter of the sidecar's log records (VictoriaLogs' stream fields are the OTLP resource
#: attributes).
LOGS = '{service.name="otel-service"}'
RUN_ID = os.urandom(3).hex()


# ------------------------------------------------------------------------------------------ helpers


def eventually(stack: Stack, what: str, check: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
    """Run ``check`` until it stops raising AssertionError (or a backend is briefly unreachable);
    re-raise its last failure after ``timeout`` seconds. Fails at once if a component died."""
    deadline = time.monotonic() + timeout
    while True:
        stack.check_running()
        try:
            return check()
        except (AssertionError, StackError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still not true after {timeout:.0f} s: {exc}") from exc
        time.sleep(interval)


def wait_for_scrape_after(stack: Stack, moment: float) -> None:
    """Wait until Prometheus has scraped the collector's exporter after ``moment`` (Unix time)."""

    def scraped() -> None:
        value = stack.prom_value('max(timestamp(up{job="otel-collector"}))')
        assert value is not None, "no scrape of the collector yet"
        assert value > moment, f"last scrape at {value:.1f}, waiting for one after {moment:.1f}"

    eventually(stack, "a fresh scrape", scraped, timeout=30, interval=0.5)


def new_traceparent() -> tuple[str, str, str]:
    """A simulated app span: (trace_id, span_id, traceparent header)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def post(stack: Stack, path: str, payload: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    response = stack.post(path, payload, headers=headers)
    assert response.status == 202, f"POST {path} -> HTTP {response.status}: {response.body[:500]!r}"
    return response


def cid(prefix: str) -> str:
    return f"{prefix}-{RUN_ID}-{os.urandom(4).hex()}"


@dataclass
class Sent:
    """One accepted event and what the sidecar said about it."""

    kind: str  # llm_call | prediction | feedback
    event: Mapping[str, Any]
    correlation_id: str
    trace_id: str
    span_id: str | None  # known when the request carried one event
    parent_span_id: str | None
    span_name: str
    error: str | None = None
    duration_ms: float = 0.0
    end_ns: int | None = None  # backdated events: the timestamp they carried


@dataclass
class Traffic:
    started: float
    events: list[Sent] = field(default_factory=list)
    header_correlation: Sent | None = None
    traceparent_correlation: Sent | None = None


def span_name(event: Mapping[str, Any]) -> str:
    if event["kind"] == "llm_call":
        return f"{event.get('operation', 'chat')} {event['model']}"
    if event["kind"] == "prediction":
        return f"predict {event['model']}"
    return f"feedback {event['model']}"


def error_of(event: Mapping[str, Any]) -> str | None:
    if event.get("success", True):
        return None
    return str(event.get("error_type") or "_OTHER")


def send_single(
    stack: Stack,
    traffic: Traffic,
    event: dict[str, Any],
    *,
    parent: tuple[str, str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Sent:
    """POST one event to /v1/events; record the IDs the answer carries."""
    all_headers = dict(headers or {})
    if parent is not None:
        all_headers["traceparent"] = parent[2]
    answer = post(stack, "/v1/events", [event], all_headers).json()
    assert (answer["accepted"], answer["rejected"]) == (1, 0), answer
    sent = Sent(
        kind=event["kind"],
        event=event,
        correlation_id=answer["correlation_id"],
        trace_id=answer["trace_id"],
        span_id=answer["span_id"],
        parent_span_id=parent[1] if parent else None,
        span_name=span_name(event),
        error=error_of(event),
        duration_ms=float(event.get("duration_ms", 0.0)),
    )
    if parent is not None:
        assert sent.trace_id == parent[0], answer
    traffic.events.append(sent)
    return sent


def send_batch(stack: Stack, traffic: Traffic | None, events: list[dict[str, Any]]) -> list[Sent]:
    """POST a JSON array under one app span (traceparent); every event carries its correlation_id."""
    parent = new_traceparent()
    answer = post(stack, "/v1/events", events, {"traceparent": parent[2]}).json()
    assert answer == {"accepted": len(events), "rejected": 0, "errors": []}, answer
    sent = [
        Sent(
            kind=e["kind"],
            event=e,
            correlation_id=e["correlation_id"],
            trace_id=parent[0],
            span_id=None,
            parent_span_id=parent[1],
            span_name=span_name(e),
            error=error_of(e),
            duration_ms=float(e.get("duration_ms", 0.0)),
        )
        for e in events
    ]
    if traffic is not None:
        traffic.events.extend(sent)
    return sent


def metric_values(stack: Stack, expected: Mapping[str, float]) -> dict[str, float | None]:
    return {expr: stack.prom_value(expr) for expr in expected}


def assert_metrics(stack: Stack, expected: Mapping[str, float]) -> None:
    """Every query's single value equals the expected number (floats to 1e-9 relative)."""
    got = metric_values(stack, expected)
    wrong = {
        expr: (got[expr], want)
        for expr, want in expected.items()
        if got[expr] is None or got[expr] != pytest.approx(want, rel=1e-9, abs=1e-12)
    }
    assert not wrong, "Prometheus (got, expected):\n" + "\n".join(
        f"  {expr} = {g} (expected {w})" for expr, (g, w) in wrong.items()
    )


def find_traces(
    stack: Stack, trace_ids: Iterable[str], found: dict[str, list[Span]]
) -> dict[str, list[Span]]:
    """Fill ``found`` with each trace Jaeger returns; fail listing those it does not have yet."""
    missing = []
    for trace_id in trace_ids:
        if trace_id in found:
            continue
        spans = stack.trace(trace_id)
        if spans:
            found[trace_id] = spans
        else:
            missing.append(trace_id)
    assert not missing, f"Jaeger has no trace yet for {len(missing)} IDs, e.g. {missing[:5]}"
    return found


def span_of(spans: Iterable[Span], sent: Sent) -> Span:
    """The span of ``sent`` in its trace: by span ID when known, else by its correlation_id."""
    candidates = [
        s
        for s in spans
        if (
            s.span_id == sent.span_id
            if sent.span_id
            else s.attributes.get("correlation_id") == sent.correlation_id
        )
    ]
    assert len(candidates) == 1, (
        f"{len(candidates)} spans for {sent.correlation_id} in trace {sent.trace_id}: "
        f"{[(s.name, s.span_id, s.attributes.get('correlation_id')) for s in spans]}"
    )
    return candidates[0]


def logs_where(stack: Stack, field_name: str, value: str) -> list[LogLine]:
    """The sidecar's log entries whose field ``field_name`` is exactly ``value`` (LogsQL ``field:=value``)."""
    return stack.logs_query(f"{LOGS} {field_name}:={logsql_quote(value)}")


def logs_correlation_ids(stack: Stack, business_id: str) -> Counter[str]:
    """How many log entries each correlation ID has among one business's events."""
    lines = logs_where(stack, "business_id", business_id)
    return Counter(line.labels.get("correlation_id", "?") for line in lines)


# ----------------------------------------------------------------------------------- the traffic


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Traffic:
    """The main traffic, sent once: LLM calls (single, batched, backdated, failed, unpriced, with and
    without an app traceparent), lab /track events, predictions, feedback and a drifting feature."""
    t = Traffic(started=time.time())
    main = {"business_id": "e2e-main", "model": "gpt-4o", "provider": "openai", "kind": "llm_call"}

    explicit = cid("e2e-main-explicit")
    send_single(
        stack,
        t,
        {
            **main,
            "duration_ms": 120,
            "input_tokens": 100,
            "output_tokens": 20,
            "cost_usd": 0.0011,
            "intent": "booking",
            "response_type": "text",
            "appointment_requested": True,
            "conversation_id": "conv-1",
            "session_id": "sess-1",
            "correlation_id": explicit,
        },
        parent=new_traceparent(),
    )
    header = cid("e2e-header")
    t.header_correlation = send_single(
        stack,
        t,
        {
            **main,
            "duration_ms": 480,
            "input_tokens": 300,
            "output_tokens": 80,
            "cached_input_tokens": 64,
            "cost_usd": 0.0025,
            "intent": "general",
            "human_handoff": True,
            "user_id": "u-1",
        },
        parent=new_traceparent(),
        headers={"X-Correlation-ID": header},
    )
    assert t.header_correlation.correlation_id == header
    t.traceparent_correlation = send_single(
        stack,
        t,
        {
            **main,
            "duration_ms": 2500,
            "input_tokens": 1000,
            "output_tokens": 400,
            "reasoning_tokens": 50,
            "total_tokens": 1450,
            "cost_usd": 0.02,
            "appointment_booked": True,
            "attributes": {"tier": "gold", "retries": 2},
        },
        parent=new_traceparent(),
    )
    assert t.traceparent_correlation.correlation_id == t.traceparent_correlation.trace_id
    # Backdated: ends 90 s ago, lasted 1234.5 ms.
    stamp = round(time.time() - 90, 3)
    backdated = send_single(
        stack,
        t,
        {
            **main,
            "duration_ms": 1234.5,
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": 0.0001,
            "timestamp": stamp,
        },
        parent=new_traceparent(),
    )
    backdated.end_ns = int(stamp * 1e9)
    send_batch(
        stack,
        t,
        [
            {
                **main,
                "duration_ms": 80,
                "input_tokens": 50,
                "output_tokens": 10,
                "cost_usd": 0.0002,
                "correlation_id": cid("e2e-batch"),
            },
            {
                **main,
                "duration_ms": 160,
                "input_tokens": 60,
                "output_tokens": 12,
                "cost_usd": 0.0003,
                "correlation_id": cid("e2e-batch"),
            },
            {
                **main,
                "duration_ms": 30000,
                "input_tokens": 70,
                "cost_usd": 0.0,
                "success": False,
                "error_type": "timeout",
                "correlation_id": cid("e2e-batch"),
            },
            {
                **main,
                "duration_ms": 5,
                "input_tokens": 0,
                "cost_usd": 0.0,
                "success": False,
                "error_type": "rate_limit",
                "correlation_id": cid("e2e-batch"),
            },
        ],
    )
    # No price, no reported cost: counted as unpriced, never as $0.
    send_single(
        stack,
        t,
        {
            "kind": "llm_call",
            "model": "e2e-unpriced-llm",
            "provider": "e2e-provider",
            "duration_ms": 50,
            "input_tokens": 5,
            "output_tokens": 5,
            "business_id": "e2e-misc",
        },
    )

    lab = {"business_id": "e2e-lab", "model_name": "gemini-2.0-flash"}
    for body, parent in (
        (
            {
                **lab,
                "response_time_ms": 1500,
                "tokens_used": 150,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "api_cost_usd": 0.002,
                "intent_detected": "general",
                "user_message_length": 45,
                "ai_response_length": 120,
                "response_type": "text",
                "conversation_id": "conv-123",
                "session_id": "session-456",
            },
            new_traceparent(),
        ),
        (
            {
                **lab,
                "response_time_ms": 800,
                "tokens_used": 90,
                "api_cost_usd": 0.001,
                "intent_detected": "booking",
                "appointment_requested": True,
                "appointment_booked": True,
                "response_type": "appointment",
            },
            None,
        ),
        (
            {
                **lab,
                "response_time_ms": 3200,
                "tokens_used": 400,
                "api_cost_usd": 0.005,
                "human_handoff_requested": True,
                "success_rate": 0.2,
            },
            None,
        ),
    ):
        body["correlation_id"] = cid("e2e-lab")
        answer = post(stack, "/track", body, {"traceparent": parent[2]} if parent else None).json()
        assert answer["status"] == "success", answer
        assert answer["correlation_id"] == body["correlation_id"], answer
        if parent:
            assert answer["trace_id"] == parent[0]
        t.events.append(
            Sent(
                kind="llm_call",
                event=body,
                correlation_id=answer["correlation_id"],
                trace_id=answer["trace_id"],
                span_id=None,
                parent_span_id=parent[1] if parent else None,
                span_name="chat gemini-2.0-flash",
                error=None if body.get("success_rate", 1.0) >= 0.5 else "_OTHER",
                duration_ms=float(body["response_time_ms"]),
            )
        )

    churn = {"kind": "prediction", "model": "e2e-churn", "model_version": "v3", "business_id": "e2e-ml"}
    send_batch(
        stack,
        t,
        [
            {
                **churn,
                "duration_ms": 12,
                "result": "stay",
                "confidence": 0.91,
                "prediction_id": "p-1",
                "correlation_id": cid("e2e-pred"),
            },
            {
                **churn,
                "duration_ms": 30,
                "result": "churn",
                "confidence": 0.55,
                "prediction_id": "p-2",
                "correlation_id": cid("e2e-pred"),
            },
            {
                **churn,
                "duration_ms": 700,
                "result": "stay",
                "confidence": 0.99,
                "prediction_id": "p-3",
                "correlation_id": cid("e2e-pred"),
            },
            {
                **churn,
                "duration_ms": 2000,
                "success": False,
                "error_type": "timeout",
                "prediction_id": "p-4",
                "correlation_id": cid("e2e-pred"),
            },
        ],
    )
    feedback = {"kind": "feedback", "model": "e2e-churn", "model_version": "v3", "business_id": "e2e-ml"}
    send_batch(
        stack,
        t,
        [
            {**feedback, "prediction_id": "p-1", "correct": True, "correlation_id": cid("e2e-fb")},
            {**feedback, "prediction_id": "p-2", "correct": False, "correlation_id": cid("e2e-fb")},
            {
                **feedback,
                "prediction_id": "p-3",
                "correct": True,
                "source": "user",
                "correlation_id": cid("e2e-fb"),
            },
        ],
    )
    # Refused input: counted (otel_service_events_rejected_total), never exported.
    bad = stack.post("/v1/events", [{**main, "duration_ms": "slow"}])
    assert bad.status == 400, bad
    assert bad.json()["errors"][0]["field"] == "$[0].duration_ms", bad.json()
    bad = stack.post("/track", {"business_id": "e2e-lab", "tokens_used": 1})
    assert bad.status == 400, bad
    assert bad.json()["field"] == "$.response_time_ms", bad.json()
    bad = stack.post("/v1/events", [main], headers={"Authorization": "Bearer wrong-token"})
    assert bad.status == 401, bad
    # Drift: a reference window of 500 values in [0, 1), then 50 values far outside it (KS = 1).
    drift = {"kind": "prediction", "model": "e2e-drift", "model_version": "v1", "duration_ms": 1}
    values = [i / 500 for i in range(500)] + [10.0 + i for i in range(50)]
    send_batch(
        stack,
        None,
        [{**drift, "features": {"tenure": v}, "correlation_id": cid("e2e-drift")} for v in values],
    )
    return t


def expected_main_metrics(t: Traffic) -> dict[str, float]:
    """What Prometheus must show for the main traffic, computed from the events sent."""
    llm = [e.event for e in t.events if e.kind == "llm_call" and e.event.get("business_id") == "e2e-main"]
    lab = [e.event for e in t.events if e.event.get("business_id") == "e2e-lab"]
    preds = [e.event for e in t.events if e.kind == "prediction"]
    fbs = [e.event for e in t.events if e.kind == "feedback"]
    m = 'gen_ai_request_model="gpt-4o"'
    tokens = sum(e.get("total_tokens") or e.get("input_tokens", 0) + e.get("output_tokens", 0) for e in llm)
    return {
        # GenAI semantic conventions
        f"sum(gen_ai_client_operation_duration_seconds_count{{{m}}})": len(llm),
        f'sum(gen_ai_client_operation_duration_seconds_count{{{m}, error_type!=""}})': 2,
        f'sum(gen_ai_client_operation_duration_seconds_count{{{m}, error_type="timeout"}})': 1,
        f"sum(gen_ai_client_operation_duration_seconds_sum{{{m}}})": sum(e["duration_ms"] for e in llm)
        / 1000,
        f'sum(gen_ai_client_operation_duration_seconds_bucket{{{m}, le="+Inf"}})': len(llm),
        f'sum(gen_ai_client_operation_duration_seconds_bucket{{{m}, le="0.16"}})': sum(
            1 for e in llm if e["duration_ms"] / 1000 <= 0.16
        ),
        f'sum(gen_ai_client_token_usage_sum{{{m}, gen_ai_token_type="input"}})': sum(
            e.get("input_tokens", 0) for e in llm
        ),
        f'sum(gen_ai_client_token_usage_sum{{{m}, gen_ai_token_type="output"}})': sum(
            e.get("output_tokens", 0) for e in llm
        ),
        f'sum(gen_ai_client_token_usage_count{{{m}, gen_ai_token_type="output"}})': sum(
            1 for e in llm if "output_tokens" in e
        ),
        # the lab's names, main business
        'sum(ai_requests_total{business_id="e2e-main"})': len(llm),
        'sum(ai_requests_total{business_id="e2e-main", intent="booking"})': 1,
        'sum(ai_tokens_used_total{business_id="e2e-main", model="gpt-4o"})': tokens,
        'sum(ai_api_cost_usd_total{business_id="e2e-main"})': sum(e["cost_usd"] for e in llm),
        'sum(ai_cost_usd_total{business_id="e2e-main", cost_source="reported"})': sum(
            e["cost_usd"] for e in llm
        ),
        'sum(appointments_requested_total{business_id="e2e-main"})': 1,
        'sum(human_handoffs_total{business_id="e2e-main"})': 1,
        'sum(ai_outcomes_total{business_id="e2e-main", outcome="appointment_booked"})': 1,
        'sum(ai_response_time_seconds_count{business_id="e2e-main"})': len(llm),
        'sum(ai_response_time_seconds_sum{business_id="e2e-main"})': sum(e["duration_ms"] for e in llm)
        / 1000,
        'sum(ai_cost_unpriced_total{gen_ai_request_model="e2e-unpriced-llm"})': 1,
        # the lab's /track
        'sum(ai_requests_total{business_id="e2e-lab"})': len(lab),
        'sum(ai_tokens_used_total{business_id="e2e-lab", model="gemini-2.0-flash"})': sum(
            e["tokens_used"] for e in lab
        ),
        'sum(ai_api_cost_usd_total{business_id="e2e-lab"})': sum(e["api_cost_usd"] for e in lab),
        'sum(appointments_requested_total{business_id="e2e-lab"})': 1,
        'sum(human_handoffs_total{business_id="e2e-lab"})': 1,
        'sum(ai_outcomes_total{business_id="e2e-lab", outcome="appointment_booked"})': 1,
        'sum(ai_outcomes_total{business_id="e2e-lab", outcome="human_handoff"})': 1,
        'sum(ai_response_time_seconds_sum{business_id="e2e-lab"})': sum(e["response_time_ms"] for e in lab)
        / 1000,
        'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gemini-2.0-flash"})': len(
            lab
        ),
        'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gemini-2.0-flash",'
        ' error_type="_OTHER"})': 1,
        'sum(ai_message_length_count{gen_ai_request_model="gemini-2.0-flash", role="user"})': 1,
        'sum(ai_message_length_sum{gen_ai_request_model="gemini-2.0-flash", role="assistant"})': 120,
        # ML
        'sum(ml_predictions_total{model_name="e2e-churn", model_version="v3"})': len(preds),
        'sum(ml_predictions_total{model_name="e2e-churn", status="error"})': 1,
        'sum(ml_predictions_total{model_name="e2e-churn", prediction_result="stay"})': 2,
        'sum(ml_prediction_duration_seconds_sum{model_name="e2e-churn"})': sum(
            e["duration_ms"] for e in preds
        )
        / 1000,
        'sum(ml_prediction_confidence_count{model_name="e2e-churn"})': 3,
        'sum(ml_feedback_total{model_name="e2e-churn", correct="true"})': sum(1 for e in fbs if e["correct"]),
        'sum(ml_feedback_total{model_name="e2e-churn", correct="false"})': sum(
            1 for e in fbs if not e["correct"]
        ),
        'sum(ml_predictions_total{model_name="e2e-drift"})': 550,
        'max(data_drift_score{model_name="e2e-drift", feature="tenure"})': 1.0,
        # refused requests and items
        'sum(otel_service_events_rejected_total{endpoint="/v1/events", reason="invalid_field"})': 1,
        'sum(otel_service_events_rejected_total{endpoint="/v1/events", reason="unauthorized"})': 1,
        'sum(otel_service_events_rejected_total{endpoint="/track"})': 1,
    }


# ------------------------------------------------------------------------------------------- tests


def test_every_scrape_target_is_up(stack: Stack) -> None:
    """Prometheus scrapes every job of prometheus.yml: collector, its telemetry, sidecar, backends."""

    def check() -> None:
        targets = stack.prom_targets()
        jobs = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        expected = {
            "otel-collector",
            "otelcol",
            "otel-service-sidecar",
            "prometheus",
            "alertmanager",
            "jaeger",
            "victorialogs",
        }
        assert jobs.keys() == expected, jobs
        down = {job: state for job, state in jobs.items() if state[0] != "up"}
        assert not down, down

    eventually(stack, "every target up", check, timeout=40)


def test_harness_changes_only_hostnames_and_ports(stack: Stack) -> None:
    """Prometheus and Alertmanager run the repository's config files with only their addresses changed."""
    host_port = re.compile(r"""["'][A-Za-z0-9_.-]+:\d+["']""")
    for source, running_path in (
        (REPO / "prometheus" / "prometheus.yml", stack.dir / "prometheus" / "prometheus.yml"),
        (
            REPO / "prometheus" / "scrape" / "jaeger-victorialogs.yml",
            stack.dir / "prometheus" / "scrape" / "backends.yml",
        ),
    ):
        original = source.read_text().splitlines()
        running = running_path.read_text().splitlines()
        assert len(original) == len(running)
        for before, after in zip(original, running, strict=True):
            assert host_port.sub('"ADDR"', before) == host_port.sub('"ADDR"', after), (before, after)
    for rules in (REPO / "prometheus" / "rules").glob("*.yml"):
        assert (stack.dir / "prometheus" / "rules" / rules.name).read_text() == rules.read_text()
    am_original = (REPO / "alertmanager" / "alertmanager.yml").read_text()
    am_running = (stack.dir / "alertmanager" / "alertmanager.yml").read_text()
    assert stack.webhook is not None
    assert am_running == am_original.replace("http://otel-service-alert-webhook:9099", stack.webhook.url)


def test_prometheus_has_exact_counts_and_sums(stack: Stack, traffic: Traffic) -> None:
    """Prometheus (scraping the collector) has exactly the counts, sums and tokens sent: GenAI, lab, ML."""
    expected = expected_main_metrics(traffic)
    eventually(
        stack, "main traffic in Prometheus", lambda: assert_metrics(stack, expected), timeout=60, interval=2
    )
    # Series say which sidecar sent them (job = service.name, instance = service.instance.id).
    series = stack.prom_query('ai_requests_total{business_id="e2e-main"}')
    assert {s["metric"]["job"] for s in series} == {"otel-service"}
    assert all(re.fullmatch(r"[0-9a-f-]{36}", s["metric"]["instance"]) for s in series), series


def test_exemplars_point_at_traces_in_the_trace_store(stack: Stack, traffic: Traffic) -> None:
    """Histogram exemplars in Prometheus carry trace IDs of the events sent, and Jaeger has those spans."""
    histograms = {
        k: v
        for k, v in expected_main_metrics(traffic).items()
        if "_seconds_count" in k or "_seconds_sum" in k
    }
    eventually(
        stack,
        "main traffic's histograms in Prometheus",
        lambda: assert_metrics(stack, histograms),
        timeout=60,
        interval=2,
    )
    ours = {e.trace_id for e in traffic.events}
    checked = 0
    for selector in (
        'gen_ai_client_operation_duration_seconds_bucket{gen_ai_request_model="gpt-4o"}',
        'ai_response_time_seconds_bucket{business_id="e2e-lab"}',
        'ml_prediction_duration_seconds_bucket{model_name="e2e-churn"}',
    ):

        def exemplars(selector: str = selector) -> list[dict[str, Any]]:
            found = [
                ex
                for series in stack.prom_exemplars(selector, traffic.started - 300, time.time() + 60)
                for ex in series["exemplars"]
            ]
            assert found, f"no exemplars for {selector}"
            return found

        for exemplar in eventually(stack, f"exemplars of {selector}", exemplars, timeout=30):
            trace_id, span_id = exemplar["labels"]["trace_id"], exemplar["labels"]["span_id"]
            assert trace_id in ours, f"{selector}: exemplar of unknown trace {trace_id}"
            spans = eventually(
                stack, f"trace {trace_id}", lambda t=trace_id: find_traces(stack, [t], {})[t], timeout=30
            )
            match = [s for s in spans if s.span_id == span_id]
            assert len(match) == 1, f"{selector}: span {span_id} not in trace {trace_id}"
            # The exemplar's value is the observation: the span's duration.
            assert (match[0].end_ns - match[0].start_ns) / 1e9 == pytest.approx(
                float(exemplar["value"]), abs=1e-6
            )
            checked += 1
    assert checked >= 3


def test_trace_store_has_every_span_backdated_and_parented(stack: Stack, traffic: Traffic) -> None:
    """Jaeger has each event's trace by ID: span name, app parent (traceparent), duration, end, status."""
    found: dict[str, list[Span]] = {}
    eventually(
        stack,
        "every trace in Jaeger",
        lambda: find_traces(stack, {e.trace_id for e in traffic.events}, found),
        timeout=60,
    )

    def check_all() -> None:
        for sent in traffic.events:
            spans = stack.trace(sent.trace_id) or []
            span = span_of(spans, sent)
            where = f"{sent.span_name} ({sent.correlation_id})"
            assert span.name == sent.span_name, where
            assert span.parent_span_id == sent.parent_span_id, f"{where}: parent {span.parent_span_id}"
            assert span.end_ns - span.start_ns == int(sent.duration_ms * 1e6), f"{where}: duration"
            if sent.end_ns is not None:
                assert abs(span.end_ns - sent.end_ns) <= 1000, (
                    f"{where}: ends at {span.end_ns}, not {sent.end_ns}"
                )
            else:
                assert abs(span.end_ns / 1e9 - time.time()) < 600, f"{where}: end time {span.end_ns}"
            assert span.attributes.get("correlation_id") == sent.correlation_id, where
            assert span.resource.get("service.name") == "otel-service", where
            if sent.kind == "llm_call":
                assert span.kind == "SPAN_KIND_CLIENT", where
                assert span.attributes["gen_ai.request.model"] == sent.span_name.split(" ", 1)[1], where
                assert span.attributes["gen_ai.operation.name"] == "chat", where
            if sent.error:
                assert span.status_code == "STATUS_CODE_ERROR", where
                assert span.attributes.get("error.type") == sent.error, where
            else:
                assert span.status_code != "STATUS_CODE_ERROR", where
                assert "error.type" not in span.attributes, where

    eventually(stack, "spans as sent", check_all, timeout=30)
    backdated = [e for e in traffic.events if e.end_ns is not None]
    assert len(backdated) == 1
    gold = [e for e in traffic.events if e.event.get("attributes")]
    spans = stack.trace(gold[0].trace_id) or []
    attrs = span_of(spans, gold[0]).attributes
    assert (attrs["app.tier"], attrs["app.retries"]) == ("gold", 2)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (1000, 400)


def test_log_store_has_every_line_by_trace_id_and_correlation_id(stack: Stack, traffic: Traffic) -> None:
    """VictoriaLogs returns each event's JSON log line by correlation_id and by trace_id (fields of the
    OTLP log record, not stream fields)."""

    def check_all() -> None:
        for sent in traffic.events:
            by_cid = logs_where(stack, "correlation_id", sent.correlation_id)
            assert len(by_cid) == 1, f"{sent.correlation_id}: {len(by_cid)} lines"
            line = by_cid[0]
            body = line.json()
            assert body["correlation_id"] == sent.correlation_id
            assert body["trace_id"] == sent.trace_id == line.labels["trace_id"]
            assert body["span_id"] == line.labels["span_id"]
            if sent.span_id:
                assert body["span_id"] == sent.span_id
            assert body["event"] == sent.kind == line.labels["kind"]
            assert body["level"] == ("error" if sent.error else "info")
            assert line.labels.get("business_id") == sent.event.get("business_id"), line.labels
            by_trace = logs_where(stack, "trace_id", sent.trace_id)
            assert line in by_trace, f"{sent.correlation_id}: not found by trace_id {sent.trace_id}"

    eventually(stack, "every log line in VictoriaLogs", check_all, timeout=60, interval=2)
    # Stream fields (the index) stay low-cardinality: IDs are ordinary fields, not stream fields.
    stream_fields = stack.logs_stream_field_names()
    assert not {"correlation_id", "trace_id", "span_id"} & set(stream_fields), stream_fields
    assert "service.name" in stream_fields


def test_correlation_id_from_response_header_leads_to_trace_and_logs(stack: Stack, traffic: Traffic) -> None:
    """A response's X-Correlation-ID finds the log line, whose trace_id finds the span in Jaeger."""
    for sent in (traffic.header_correlation, traffic.traceparent_correlation):
        assert sent is not None
        correlation_id = sent.correlation_id

        def lines(correlation_id: str = correlation_id) -> list[LogLine]:
            found = logs_where(stack, "correlation_id", correlation_id)
            assert found, f"no log line for {correlation_id}"
            return found

        found = eventually(stack, f"log lines of {correlation_id}", lines, timeout=60)
        trace_ids = {line.labels["trace_id"] for line in found}
        assert trace_ids == {sent.trace_id}
        spans = eventually(
            stack,
            "trace",
            lambda ids=trace_ids, trace_id=sent.trace_id: find_traces(stack, ids, {})[trace_id],
            timeout=60,
        )
        matching = [s for s in spans if s.attributes.get("correlation_id") == correlation_id]
        assert [s.span_id for s in matching] == [line.labels["span_id"] for line in found] == [sent.span_id]
        # ... and back: the trace's lines in the log store are the same ones.
        assert logs_where(stack, "trace_id", sent.trace_id) == found
        # Jaeger's tag search finds the same trace by the span's correlation_id attribute.
        tags = {"correlation_id": correlation_id}

        def search(tags: Mapping[str, str] = tags) -> list[str]:
            hits = stack.trace_search(tags)
            assert hits, f"no trace for {tags}"
            return hits

        hits = eventually(stack, f"trace search {tags}", search, timeout=30)
        assert hits == [sent.trace_id]


def test_cardinality_cap_folds_values_into_other_and_counts_them(stack: Stack, traffic: Traffic) -> None:
    """201 distinct intents exceed the 200-value cap: the excess becomes "_OTHER" and is counted."""
    events = [
        {
            "kind": "llm_call",
            "model": "gpt-4o-mini",
            "duration_ms": 10,
            "business_id": "e2e-cardinality",
            "intent": f"intent-{i:03d}",
            "cost_usd": 0.0,
            "correlation_id": cid("e2e-card"),
        }
        for i in range(201)
    ]
    send_batch(stack, None, events)

    def check() -> None:
        total = stack.prom_value('sum(ai_requests_total{business_id="e2e-cardinality"})')
        other = stack.prom_value('sum(ai_requests_total{intent="_OTHER"})')
        overflow = stack.prom_value('sum(otel_service_attribute_overflow_total{attribute="intent"})')
        assert total == 201, total
        assert other, other
        assert overflow == other, (overflow, other)

    eventually(stack, "cardinality overflow in Prometheus", check, timeout=60, interval=2)


def test_burst_and_largest_event_arrive_whole(stack: Stack) -> None:
    """12,000 events in 0.5 s and the largest event the sidecar accepts: every line, span and count."""
    traces = []
    for _ in range(12):
        parent = new_traceparent()
        traces.append(parent[0])
        events = [
            {
                "kind": "llm_call",
                "model": "gpt-4o-mini",
                "duration_ms": 3,
                "business_id": "e2e-burst",
                "conversation_id": "c" * 200,
                "attributes": {"note": "v" * 300},
                "correlation_id": cid("e2e-burst"),
            }
            for _ in range(1000)
        ]
        response = post(stack, "/v1/events", events, {"traceparent": parent[2]})
        assert response.json()["accepted"] == 1000
    # 64 attributes of 4096 three-byte characters: a ~790 KB body and log line (VictoriaLogs takes log
    # entries up to 2 MiB; the sidecar's body limit is 1 MiB).
    largest = {
        "kind": "llm_call",
        "model": "gpt-4o-mini",
        "duration_ms": 3,
        "business_id": "e2e-largest",
        "correlation_id": cid("e2e-largest"),
        "attributes": {f"a{i:02d}": "€" * 4096 for i in range(64)},
    }
    body = json.dumps([largest], ensure_ascii=False).encode()
    response = http_request(
        "POST",
        stack.sidecar_url + "/v1/events",
        body=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.token}"},
    )
    assert response.status == 202, response.body[:300]

    def log_counts() -> None:
        result = stack.logs_stats(
            f'{LOGS} business_id:in("e2e-burst", "e2e-largest") | stats by (business_id) count() as lines'
        )
        counts = {r["business_id"]: r["lines"] for r in result}
        assert counts == {"e2e-burst": "12000", "e2e-largest": "1"}, counts

    eventually(stack, "burst lines in VictoriaLogs", log_counts, timeout=60, interval=2)
    line = logs_where(stack, "correlation_id", largest["correlation_id"])
    assert len(line) == 1
    assert line[0].json()["attributes"] == largest["attributes"]

    def trace_spans() -> None:
        sizes = [len(stack.trace(t) or []) for t in traces]
        assert sizes == [1000] * 12, sizes

    eventually(stack, "burst spans in Jaeger", trace_spans, timeout=60, interval=2)
    eventually(
        stack,
        "burst counted in Prometheus",
        lambda: assert_metrics(
            stack,
            {
                'sum(ai_requests_total{business_id="e2e-burst"})': 12000,
                'sum(ai_requests_total{business_id="e2e-largest"})': 1,
            },
        ),
        timeout=60,
        interval=2,
    )
    # Nothing was refused by a backend (a permanent error: the collector would have dropped it).
    assert stack.prom_query("otelcol_exporter_send_failed_spans_total") == []
    assert stack.prom_query("otelcol_exporter_send_failed_log_records_total") == []


def _send_for(stack: Stack, seconds: float, business_id: str, model: str, every: float = 0.5) -> list[Sent]:
    """Single events, one every ``every`` seconds for ``seconds``; each acknowledged with 202."""
    sent: list[Sent] = []
    scratch = Traffic(started=time.time())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        event = {
            "kind": "llm_call",
            "model": model,
            "duration_ms": 25,
            "input_tokens": 3,
            "output_tokens": 2,
            "cost_usd": 0.0,
            "business_id": business_id,
            "correlation_id": cid(business_id),
        }
        sent.append(send_single(stack, scratch, event, parent=new_traceparent()))
        time.sleep(every)
    return sent


def _assert_all_delivered(stack: Stack, business_id: str, sent: list[Sent], timeout: float) -> None:
    """Every event's log line is in VictoriaLogs exactly once and every trace is in Jaeger."""
    want = Counter(s.correlation_id for s in sent)

    def logs() -> None:
        got = logs_correlation_ids(stack, business_id)
        missing = want.keys() - got.keys()
        assert not missing, f"{len(missing)} of {len(want)} {business_id} lines missing in VictoriaLogs"
        assert got == want, f"{business_id}: unexpected or duplicate lines: {got - want}"

    found: dict[str, list[Span]] = {}
    eventually(stack, f"{business_id} logs in VictoriaLogs", logs, timeout=timeout, interval=2)
    eventually(
        stack,
        f"{business_id} traces in Jaeger",
        lambda: find_traces(stack, {s.trace_id for s in sent}, found),
        timeout=timeout,
        interval=2,
    )
    for s in sent:
        assert [sp.span_id for sp in found[s.trace_id]] == [s.span_id]


def test_log_store_and_trace_store_outages_lose_nothing(stack: Stack) -> None:
    """VictoriaLogs, then Jaeger, down ~20 s each while events flow: every line and trace arrives
    afterwards (the collector's persistent sending queues hold them and retry)."""
    stack.stop("victorialogs")
    during_logs = _send_for(stack, 20, "e2e-logs-outage", "gpt-4.1-mini")
    stack.start_component("victorialogs")
    stack.stop("jaeger")
    during_traces = _send_for(stack, 20, "e2e-traces-outage", "gpt-4.1-mini")
    stack.start_component("jaeger")
    assert min(len(during_logs), len(during_traces)) >= 30
    _assert_all_delivered(stack, "e2e-logs-outage", during_logs, timeout=120)
    _assert_all_delivered(stack, "e2e-traces-outage", during_traces, timeout=120)
    calls = 'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gpt-4.1-mini"})'
    expected = {calls: float(len(during_logs) + len(during_traces))}
    eventually(
        stack,
        "outage traffic in Prometheus",
        lambda: assert_metrics(stack, expected),
        timeout=30,
        interval=2,
    )


def test_collector_outage_loses_nothing(stack: Stack) -> None:
    """The collector down ~15 s: the sidecar spools and retries; every trace, line and count arrives."""
    stack.stop("collector")
    sent = _send_for(stack, 15, "e2e-collector-outage", "o3-mini")
    stack.start_component("collector")
    _assert_all_delivered(stack, "e2e-collector-outage", sent, timeout=120)
    eventually(
        stack,
        "collector-outage traffic in Prometheus",
        lambda: assert_metrics(
            stack,
            {
                'sum(ai_requests_total{business_id="e2e-collector-outage"})': len(sent),
                'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="o3-mini"})': len(
                    sent
                ),
                'sum(ai_tokens_used_total{business_id="e2e-collector-outage"})': 5 * len(sent),
            },
        ),
        timeout=60,
        interval=2,
    )
    # The sidecar saw the outage (failed exports, retried) and dropped nothing.
    failures = stack.prom_value('sum(otel_service_export_items_total{outcome="failure"})')
    assert failures, failures
    assert stack.prom_query("otel_service_dropped_total") == []


def _alert_states(stack: Stack) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in stack.alerts()}


def test_alerts_fire_and_reach_alertmanager_and_webhook(stack: Stack) -> None:
    """Failing LLM calls and predictions, then no sidecar: four alerts fire, route and notify the webhook."""
    flaky = {
        "kind": "llm_call",
        "model": "e2e-flaky-model",
        "provider": "e2e-provider",
        "duration_ms": 40,
        "success": False,
        "error_type": "server_error",
        "business_id": "e2e-alerts",
    }
    fraud = {
        "kind": "prediction",
        "model": "e2e-fraud",
        "model_version": "v1",
        "duration_ms": 5,
        "success": False,
        "error_type": "model_unavailable",
        "business_id": "e2e-alerts",
    }

    # Error traffic spread over several metric exports and at least two scrapes (a rate needs two
    # samples); stop as soon as Prometheus sees both counters increase.
    def errors_visible() -> None:
        send_batch(
            stack,
            None,
            [{**flaky, "correlation_id": cid("e2e-flaky")} for _ in range(3)]
            + [{**fraud, "correlation_id": cid("e2e-fraud")}],
        )
        for expr in (
            'sum(increase(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="e2e-flaky-model"}[1m]))',
            'sum(increase(ml_predictions_total{model_name="e2e-fraud", status="error"}[1m]))',
        ):
            value = stack.prom_value(expr)
            assert value, f"{expr} = {value}"

    eventually(stack, "error traffic visible as a rate", errors_visible, timeout=60, interval=1)
    stack.stop("sidecar")

    want_firing = {"SidecarDown", "AIErrorRateCritical", "AIErrorRateWarning", "PredictionErrorRate"}

    def firing_in_prometheus() -> dict[str, str]:
        states = _alert_states(stack)
        assert all(states.get(name) == "firing" for name in want_firing), states
        return states

    try:
        eventually(stack, "alerts firing in Prometheus", firing_in_prometheus, timeout=150, interval=2)
        by_name = {a["labels"]["alertname"]: a for a in stack.alerts()}
        assert by_name["AIErrorRateCritical"]["labels"]["gen_ai_request_model"] == "e2e-flaky-model"
        assert float(by_name["AIErrorRateCritical"]["value"]) == pytest.approx(1.0)
        assert by_name["PredictionErrorRate"]["labels"]["model_name"] == "e2e-fraud"

        def in_alertmanager() -> dict[str, dict[str, Any]]:
            alerts = {a["labels"]["alertname"]: a for a in stack.am_alerts()}
            assert want_firing <= alerts.keys(), sorted(alerts)
            return alerts

        am = eventually(stack, "alerts in Alertmanager", in_alertmanager, timeout=60, interval=2)
        for name in ("SidecarDown", "AIErrorRateCritical", "PredictionErrorRate"):
            assert am[name]["status"]["state"] == "active", (name, am[name]["status"])
        # alertmanager.yml's inhibit rule: the critical alert of a family mutes its warning.
        assert am["AIErrorRateWarning"]["status"]["state"] == "suppressed", am["AIErrorRateWarning"]["status"]
        assert am["AIErrorRateWarning"]["status"]["inhibitedBy"], am["AIErrorRateWarning"]["status"]

        assert stack.webhook is not None
        webhook = stack.webhook

        def notified() -> None:
            got = {
                (path, a["labels"]["alertname"]) for path, a in webhook.alerts() if a["status"] == "firing"
            }
            want = {
                ("/critical", "SidecarDown"),
                ("/critical", "AIErrorRateCritical"),
                ("/default", "PredictionErrorRate"),
            }
            assert want <= got, f"webhook got {sorted(got)}"

        eventually(stack, "webhook notifications", notified, timeout=60, interval=2)
        assert not [a for _, a in webhook.alerts() if a["labels"]["alertname"] == "AIErrorRateWarning"], (
            "an inhibited warning was sent"
        )
        for _, alert in webhook.alerts():
            assert alert["annotations"]["runbook_url"].startswith("README.md#runbook-")
    finally:
        if not stack.component("sidecar").running:
            stack.start_component("sidecar")


#: Runbook query languages whose engines are AGPL-3.0 (Loki: LogQL, Tempo: TraceQL): this suite never
#: runs them, so these queries are checked only by the compose deployment (README, "What is verified
#: where"). LogsQL blocks (VictoriaLogs) and jaeger blocks (Jaeger's /api/traces search) are run here.
UNRUNNABLE_LANGUAGES = {"logql", "traceql"}


def test_runbook_queries_run_on_the_real_backends(stack: Stack) -> None:
    """Every PromQL query in the README's runbooks is accepted by the real Prometheus, every LogsQL
    query by the real VictoriaLogs and every Jaeger search by the real Jaeger. (LogQL and TraceQL need
    Loki and Tempo: compose only.)"""
    problems = []
    count = 0
    for alert, book in runbooks().items():
        for language, query in book.queries:
            if language in UNRUNNABLE_LANGUAGES:
                continue
            count += 1
            try:
                if language == "promql":
                    stack.prom_query(query)
                elif language == "logsql":
                    stack.logs_query(query, limit=1)
                elif language == "jaeger":
                    stack.trace_find(dict(parse_qsl(query, strict_parsing=True)))
                else:
                    problems.append(f"{alert}: no engine for {language} {query}")
            except StackError as exc:
                problems.append(f"{alert}: {language} {query}: {exc}")
    assert count >= 24
    assert not problems, "\n".join(problems)


def _collector_has_crash_traffic(stack: Stack) -> None:
    response = http_request("GET", stack.collector_metrics_url)
    assert b'business_id="e2e-crash"' in response.body, "no e2e-crash series in the collector yet"


def _possible_span_duplicates(stack: Stack) -> int:
    """What the sidecar counted as possibly sent twice (each event's span and log record), through
    every restart: export batches resent after a restart or a timeout, and shard records copied again."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    text = http_request("GET", stack.sidecar_url + "/metrics", headers=headers).body.decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("otel_service_export_duplicates_total{")
            or (
                line.startswith("otel_service_intake_shard_records_total{")
                and 'outcome="possible_duplicate"' in line
            )
        )
    )


#: kill -9s of the sidecar in the loop below.
KILLS = 8


def test_sidecar_kill_9_loop_under_load_keeps_totals_exact(stack: Stack) -> None:
    """8 kill -9s of the sidecar under load, each followed by a restart: every acknowledged event
    arrives, resends are counted, and Prometheus totals equal the owned events, in one series."""
    acked: list[Sent] = []
    uncertain: list[tuple[str, str]] = []  # (correlation_id, trace_id) of requests cut short by a kill
    stop = threading.Event()
    up = threading.Event()
    up.set()
    scratch = Traffic(started=time.time())

    def load() -> None:
        i = 0
        while not stop.is_set():
            parent = new_traceparent()
            event = {
                "kind": "llm_call",
                "model": "gpt-4.1",
                "duration_ms": 15,
                "input_tokens": 7,
                "output_tokens": 3,
                "cost_usd": 0.0,
                "business_id": "e2e-crash",
                "correlation_id": f"e2e-crash-{RUN_ID}-{i:05d}",
            }
            i += 1
            up.wait()
            try:
                acked.append(send_single(stack, scratch, event, parent=parent))
                time.sleep(0.02)  # ~50 requests/s: steady load, and a few hundred traces to check
            except (OSError, AssertionError):
                # The sidecar died while (or before) it handled this request: it may or may not own it.
                uncertain.append((event["correlation_id"], parent[0]))
                up.wait()

    thread = threading.Thread(target=load, name="crash-load")
    thread.start()
    try:
        # The first kill once the first instance has pushed some of this traffic to the collector
        # (so both the pushed part and the replayed rest are checked); each with more acknowledged.
        eventually(
            stack, "first metric push of the load", lambda: _collector_has_crash_traffic(stack), 30, 0.2
        )
        for kill in range(KILLS):
            before = len(acked)
            deadline = time.monotonic() + 10
            while len(acked) < before + 30 + 10 * kill and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(acked) > before, f"nothing acknowledged before kill {kill}"
            up.clear()
            stack.kill("sidecar")
            time.sleep(0.1)
            stack.start_component("sidecar")
            up.set()
        time.sleep(0.5)
    finally:
        stop.set()
        up.set()
        thread.join(15)
    assert not thread.is_alive()
    assert len(uncertain) <= KILLS

    n = len(acked)
    in_flight = {c for c, _ in uncertain}

    def logs() -> Counter[str]:
        # A log record resent after a kill is an identical copy (same time, same line). Loki stores
        # such a copy once (it drops entries whose stream, timestamp and line repeat); VictoriaLogs keeps
        # both. So identical copies count once here, as in Loki, and their number is bounded below by
        # what the sidecar counts as possibly sent twice; any other second line is a duplicate.
        lines = logs_where(stack, "business_id", "e2e-crash")
        distinct = {(line.labels.get("correlation_id", "?"), line.time_ns, line.line) for line in lines}
        copies["identical"] = len(lines) - len(distinct)
        got = Counter(correlation_id for correlation_id, _, _ in distinct)
        missing = {s.correlation_id for s in acked} - got.keys()
        assert not missing, (
            f"{len(missing)} of {n} acknowledged events have no log line, e.g. {sorted(missing)[:3]}"
        )
        extra = got.keys() - {s.correlation_id for s in acked} - in_flight
        assert not extra, f"lines of events never sent: {extra}"
        duplicates = {k: v for k, v in got.items() if v != 1}
        assert not duplicates, f"duplicate lines: {duplicates}"
        return got

    copies = {"identical": 0}
    eventually(stack, "every acknowledged log line in VictoriaLogs", logs, timeout=90, interval=2)
    assert copies["identical"] <= _possible_span_duplicates(stack), copies
    found: dict[str, list[Span]] = {}
    eventually(
        stack,
        "every acknowledged trace in Jaeger",
        lambda: find_traces(stack, {s.trace_id for s in acked}, found),
        timeout=90,
        interval=2,
    )
    for s in acked:
        assert {sp.span_id for sp in found[s.trace_id]} == {s.span_id}
    # Delivery is at least once: a batch the collector took just before a kill, its success not yet
    # on disk, is sent again, and so is a shard copy cut short. Each such resend is counted; a span
    # found twice that no count accounts for is a bug.
    extra_spans = sum(len(found[s.trace_id]) - 1 for s in acked)
    assert extra_spans <= _possible_span_duplicates(stack), extra_spans

    per_event = {
        'sum(ai_requests_total{business_id="e2e-crash"})': 1,
        'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gpt-4.1"})': 1,
        'sum(ai_tokens_used_total{business_id="e2e-crash"})': 10,
    }

    def counted_exactly() -> None:
        # Metric totals are restored from the checkpoint after each kill and continue the same series:
        # each owned event is counted once. A request cut short by a kill is owned if its event was
        # spooled: then its log line comes too, after the restart's replay.
        owned = n + sum(1 for c in in_flight if logs_where(stack, "correlation_id", c))
        got = metric_values(stack, per_event)
        wrong = {expr: (got[expr], owned * k) for expr, k in per_event.items() if got[expr] != owned * k}
        assert not wrong, f"Prometheus (got, owned): {wrong}"

    eventually(stack, "crash traffic counted exactly", counted_exactly, timeout=60, interval=2)
    # One series through every restart: the spool's service.instance.id, one Prometheus instance.
    instances = {
        s["metric"]["instance"] for s in stack.prom_query('ai_requests_total{business_id="e2e-crash"}')
    }
    assert len(instances) == 1, instances
    wait_for_scrape_after(stack, time.time() + 2.5)  # a later metric push (every 2 s), scraped
    counted_exactly()
    assert stack.prom_query("otel_service_dropped_total") == []


def test_two_intake_processes_deliver_and_count_every_event_once(stack: Stack) -> None:
    """OTELSVC_INTAKE_PROCESSES=2 through the real collector: every event once in VictoriaLogs and
    Prometheus."""
    sidecar = stack.component("sidecar")
    original = dict(sidecar.env)
    sidecar.env["OTELSVC_INTAKE_PROCESSES"] = "2"
    stack.restart("sidecar")
    try:
        n = 120
        ids = [f"e2e-multi-{RUN_ID}-{i:03d}" for i in range(n)]
        for cid in ids:  # a connection per request: the kernel spreads them over both processes
            event = {
                "kind": "llm_call",
                "model": "gpt-4.1-mini",
                "duration_ms": 12,
                "input_tokens": 5,
                "output_tokens": 2,
                "cost_usd": 0.0,
                "business_id": "e2e-multi",
                "correlation_id": cid,
            }
            assert stack.post("/v1/events", event).status == 202
        time.sleep(0.6)  # the second process publishes its counts every 0.25 s
        detail = http_request(
            "GET", stack.sidecar_url + "/health/detailed", headers={"Authorization": f"Bearer {stack.token}"}
        ).json()
        assert [p["requests"] > 0 for p in detail["intake_processes"]] == [True, True], detail
        assert detail["events"]["accepted"].get("llm_call", 0) >= n

        def logs() -> None:
            got = logs_correlation_ids(stack, "e2e-multi")
            assert got == Counter(dict.fromkeys(ids, 1)), f"{len(got)} of {n} lines, or duplicates"

        eventually(stack, "every line of both intake processes in VictoriaLogs", logs, timeout=90, interval=2)
        expected = {'sum(ai_requests_total{business_id="e2e-multi"})': n}
        eventually(stack, "counted once", lambda: assert_metrics(stack, expected), timeout=60, interval=2)
    finally:
        sidecar.env.clear()
        sidecar.env.update(original)
        stack.restart("sidecar")


# -------------------------------------------------------------------- rules and dashboard queries

#: Dashboard queries (variables filled in) that cannot have data in a test run, and why. Each must
#: evaluate and stay empty for the whole run.
NO_DATA = {
    "sum by (signal, reason) (increase(otel_service_dropped_total[1m]))": (
        "the sidecar must never drop anything: otel_service_dropped_total stays absent"
    ),
    'count by (__name__) ({otel_metric_overflow="true"})': (
        "needs more than OTELSVC_CARDINALITY_LIMIT (2000) series in one metric; inducing it would fold "
        "this run's series together and break every exact count"
    ),
    # The collector counts an item as failed only when it gives up on it: its exporters retry until
    # delivered (max_elapsed_time: 0), so only a permanent rejection by a store (data lost)
    # shows here. Outages show in the queue size instead.
    **dict.fromkeys(
        (
            f"sum by (exporter) (rate(otelcol_exporter_send_failed_{signal}_total[1m]))"
            for signal in ("spans", "log_records")
        ),
        "a permanent rejection by a backend loses data; this run must have none",
    ),
    # Only a full sending queue (10000 requests, persistent) refuses to enqueue, and that loses data.
    **dict.fromkeys(
        (
            f"sum by (exporter) (rate(otelcol_exporter_enqueue_failed_{signal}_total[1m]))"
            for signal in ("spans", "log_records")
        ),
        "only a full sending queue refuses items (data lost); the queue never fills in a test run",
    ),
}


#: Metrics that only Tempo's metrics generator writes (remote write into Prometheus). Tempo is AGPL-3.0
#: and runs only in the compose deployment; here (Jaeger) these series cannot exist, so the Tempo data
#: source's trace-to-metrics queries must evaluate on the real Prometheus and stay empty.
TEMPO_GENERATED_METRICS = ("traces_spanmetrics_", "traces_service_graph_")


def _compose_only_reason(expr: str) -> str | None:
    if any(prefix in expr for prefix in TEMPO_GENERATED_METRICS):
        return "its metrics come from Tempo's metrics generator, which only the compose deployment runs"
    return None


def _grafana_concrete(expr: str) -> str:
    for var, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$__tags", 'service="otel-service"'),
    ):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{[^}]*\}|\$\w+", ".*", expr)


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, datasource type, query) of every dashboard target, variable and the Tempo data source's
    PromQL queries."""
    out: list[tuple[str, str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for path in sorted((REPO / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                query = target.get("expr") or target.get("query")
                if query:
                    out.append((f"{path.name}: {panel.get('title')}", ds.get("type", "?"), query))
        for var in dashboard.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query or "", re.DOTALL)
            if var.get("type") == "query" and match:
                out.append(
                    (
                        f"{path.name}: variable {var['name']}",
                        "prometheus",
                        f"count by ({match[2]}) ({match[1]})",
                    )
                )
    datasources = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    for ds in datasources["datasources"]:
        for q in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            out.append((f"datasource {ds['name']}: {q['name']}", "prometheus", q["query"].replace("$$", "$")))
    return out


#: Loki labels of OTLP resource attributes -> the attribute (VictoriaLogs keeps the OTLP names).
LOKI_LABEL_ATTRIBUTES = {"service_name": "service.name", "service_namespace": "service.namespace"}


def _logql_selector_as_logsql(logql: str) -> str:
    """A LogQL query that is only a stream selector of exact matchers on resource-attribute labels
    (``{service_name="otel-service"}``) as the LogsQL stream filter of the same records. Anything else
    fails: a richer Loki panel query needs Loki (compose only) and must be listed as such."""
    match = re.fullmatch(r"\s*\{(.*)\}\s*", logql)
    matchers = re.findall(r'\s*(\w+)\s*=\s*("(?:[^"\\]|\\.)*")\s*(?:,|$)', match[1]) if match else []
    if not match or not matchers or any(label not in LOKI_LABEL_ATTRIBUTES for label, _ in matchers):
        raise AssertionError(f"dashboard Loki query {logql!r} is more than a resource-attribute selector")
    return "{" + ", ".join(f"{LOKI_LABEL_ATTRIBUTES[label]}={value}" for label, value in matchers) + "}"


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_every_rule_and_dashboard_query_has_data(stack: Stack, traffic: Traffic) -> None:
    """Every rule loads healthy; every recording rule and dashboard query returns data during this run."""
    rules = _rules()
    loaded = [r for g in stack.prom_rules() for r in g["rules"]]
    assert len(loaded) == len(rules), (len(loaded), len(rules))
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not unhealthy, unhealthy

    start, end = stack.started_at, time.time()
    step = max(5.0, (end - start) / 500)

    def has_data(expr: str) -> bool:
        return any(series["values"] for series in stack.prom_query_range(expr, start, end, step))

    empty_records = [r["record"] for r in rules if "record" in r and not has_data(r["record"])]
    assert not empty_records, f"recording rules without data in this run: {empty_records}"

    problems: list[str] = []
    for where, kind, query in _dashboard_queries():
        if kind == "loki":
            # The panel's stream selector, asked of the log store this suite runs (VictoriaLogs).
            logsql = _logql_selector_as_logsql(query)
            if not stack.logs_query(logsql, limit=10):
                problems.append(f"{where}: Loki {query} (as LogsQL {logsql}) returned nothing")
            continue
        expr = _grafana_concrete(query)
        try:
            data = has_data(expr)
        except StackError as exc:
            problems.append(f"{where}: {expr} does not evaluate: {exc}")
            continue
        reason = NO_DATA.get(expr) or _compose_only_reason(expr)
        if reason is not None:
            if data:
                problems.append(f"{where}: {expr} has data, but {reason}")
        elif not data:
            problems.append(f"{where}: {expr} returned no data in this run")
    assert not problems, "\n".join(problems)
