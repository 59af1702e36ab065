"""Analytics from the event store, checked against figures computed here from the events sent.

The expected figures are worked out in this file, in plain Python, from the events the test sends (the
price table read as JSON, nearest-rank percentiles over the sorted durations), never by the store's
own queries; the kill -9 test reads the SQLite file itself for duplicates and gaps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from otel_service.intake.analytics import ANALYTICS_PATHS, parse_time
from otel_service.intake.status import Forwarder
from otel_service.model.events import LlmCall
from otel_service.store.schema import KIND_COLUMNS, row_of
from otel_service.testing import OtlpReceiver

from .conftest import FAST_EXPORT, StartApp, free_port
from .test_delivery import _post, _serve
from .test_store import _envelope

PRICES = json.loads((Path(__file__).parent.parent / "otel_service" / "model" / "prices.json").read_text())
HOUR = 3600
#: The events are spread over the four whole hours before the current one (never in the future).
BASE = (int(time.time()) // HOUR - 5) * HOUR


# -- the events sent, and what each should count as ----------------------------------------------


def _llm_events(
    count: int, seed: int, businesses: tuple[str, ...] = ("acme", "globex")
) -> list[dict[str, Any]]:
    """A varied, reproducible mix of native LLM calls."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        event: dict[str, Any] = {
            "kind": "llm_call",
            "model": rng.choice(["gpt-4o", "gemini-1.5-flash", "in-house-7b"]),
            "duration_ms": rng.randrange(20, 4000) / 2,
            "business_id": rng.choice(businesses),
            "timestamp": BASE + rng.randrange(0, 4 * HOUR),
            "correlation_id": f"llm-{seed}-{n}",
        }
        if rng.random() < 0.8:
            event["input_tokens"] = rng.randrange(1, 2000)
            event["output_tokens"] = rng.randrange(1, 800)
            if rng.random() < 0.4:
                event["cached_input_tokens"] = rng.randrange(0, 3000)  # may exceed the input: capped
            if rng.random() < 0.3:
                event["reasoning_tokens"] = rng.randrange(0, 300)
        if rng.random() < 0.2:
            event["total_tokens"] = rng.randrange(1, 5000)
        if rng.random() < 0.3:
            event["cost_usd"] = rng.randrange(0, 10_000) / 1e6
        if rng.random() < 0.15:
            event["success"] = False
            if rng.random() < 0.5:
                event["error_type"] = "timeout"
        for name, choices in (
            ("intent", ["booking", "pricing", "general"]),
            ("response_type", ["text", "cta"]),
        ):
            if rng.random() < 0.8:
                event[name] = rng.choice(choices)
        for flag in ("appointment_requested", "appointment_booked", "human_handoff"):
            if rng.random() < 0.3:
                event[flag] = True
        events.append(event)
    return events


def _track_events(count: int, seed: int) -> list[dict[str, Any]]:
    """The lab's /track payloads for "acme" (the chat route's success and failure shapes)."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        prompt, completion = rng.randrange(10, 500), rng.randrange(10, 300)
        event: dict[str, Any] = {
            "business_id": "acme",
            "session_id": f"s-{n}",
            "response_time_ms": rng.randrange(100, 3000),
            "tokens_used": prompt + completion,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "success_rate": rng.choice([1.0, 1.0, 0.0]),
            "model_name": "gemini-1.5-flash",
            "intent_detected": rng.choice(["booking", "general"]),
            "appointment_requested": rng.random() < 0.5,
            "appointment_booked": rng.random() < 0.3,
            "human_handoff_requested": rng.random() < 0.2,
            "user_message_length": rng.randrange(1, 200),
            "ai_response_length": rng.randrange(1, 900),
            "response_type": rng.choice(["text", "appointment_form"]),
            "timestamp": BASE + rng.randrange(0, 4 * HOUR),
            "correlation_id": f"track-{seed}-{n}",
        }
        if rng.random() < 0.5:
            event["api_cost_usd"] = rng.randrange(0, 5000) / 1e6
        events.append(event)
    return events


def _ml_events(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for _ in range(30):
        event: dict[str, Any] = {
            "kind": "prediction",
            "model": "churn",
            "model_version": rng.choice(["v3", "v4"]),
            "duration_ms": rng.randrange(1, 200),
            "result": rng.choice(["stay", "leave"]),
            "business_id": rng.choice(["acme", "globex"]),
            "timestamp": BASE + rng.randrange(0, 4 * HOUR),
        }
        if rng.random() < 0.1:
            event["success"] = False
        events.append(event)
    for _ in range(20):
        events.append(
            {
                "kind": "feedback",
                "model": "churn",
                "model_version": rng.choice(["v3", "v4"]),
                "correct": rng.random() < 0.7,
                "business_id": rng.choice(["acme", "globex"]),
                "timestamp": BASE + rng.randrange(0, 4 * HOUR),
            }
        )
    return events


def _cost(model: str, event: dict[str, Any]) -> float | None:
    """The call's cost: as reported, else priced from the table's per-million rates, else unknown."""
    if event.get("cost_usd") is not None:
        return float(event["cost_usd"])
    price = PRICES["models"].get(model)
    if price is None or (event.get("input_tokens") is None and event.get("output_tokens") is None):
        return None
    tokens_in, tokens_out = event.get("input_tokens") or 0, event.get("output_tokens") or 0
    cached = min(event.get("cached_input_tokens") or 0, tokens_in)
    reasoning = min(event.get("reasoning_tokens") or 0, tokens_out)
    cached_rate = price.get("cached_input") or price["input"]
    reasoning_rate = price.get("reasoning") or price["output"]
    micro = (tokens_in - cached) * price["input"] + cached * cached_rate
    micro += (tokens_out - reasoning) * price["output"] + reasoning * reasoning_rate
    return micro / 1e6


def _call(event: dict[str, Any]) -> dict[str, Any]:
    """What one sent LLM call (native or the lab's) counts as."""
    if "kind" not in event:  # the lab's schema
        native = {
            "model": event["model_name"],
            "duration_ms": event["response_time_ms"],
            "input_tokens": event.get("prompt_tokens"),
            "output_tokens": event.get("completion_tokens"),
            "total_tokens": event["tokens_used"],
            "cost_usd": event.get("api_cost_usd"),
            "success": event["success_rate"] >= 0.5,
            "intent": event["intent_detected"],
            "response_type": event["response_type"],
            "appointment_requested": event["appointment_requested"],
            "appointment_booked": event["appointment_booked"],
            "human_handoff": event["human_handoff_requested"],
            "business_id": event["business_id"],
            "timestamp": event["timestamp"],
        }
        return _call({"kind": "llm_call", **native})
    tokens_in, tokens_out = event.get("input_tokens"), event.get("output_tokens")
    total = event.get("total_tokens")
    if total is None and (tokens_in is not None or tokens_out is not None):
        total = (tokens_in or 0) + (tokens_out or 0)
    return {
        "business_id": event["business_id"],
        "time": event["timestamp"],
        "model": event["model"],
        "duration": float(event["duration_ms"]),
        "success": event.get("success", True),
        "input": tokens_in or 0,
        "output": tokens_out or 0,
        "cached": event.get("cached_input_tokens") or 0,
        "reasoning": event.get("reasoning_tokens") or 0,
        "total": total or 0,
        "cost": _cost(event["model"], event),
        "intent": event.get("intent") or "unknown",
        "response_type": event.get("response_type") or "unknown",
        "requested": bool(event.get("appointment_requested")),
        "booked": bool(event.get("appointment_booked")),
        "handoff": bool(event.get("human_handoff")),
    }


def _rank(values: list[float], p: int) -> float | None:
    """The nearest-rank percentile: the value at rank ceil(p/100 * n) of the sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _expected(calls: list[dict[str, Any]], ml: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of the answer, from the calls and ML events in the slice."""
    ok = sum(c["success"] for c in calls)
    durations = [c["duration"] for c in calls]
    priced = [c for c in calls if c["cost"] is not None]
    requested = sum(c["requested"] for c in calls)
    booked = sum(c["booked"] for c in calls)
    handoffs = sum(c["handoff"] for c in calls)
    by_model: dict[str, Any] = {}
    for model in sorted({c["model"] for c in calls}):
        mine = [c for c in calls if c["model"] == model]
        by_model[model] = {
            "requests": len(mine),
            "failed": sum(not c["success"] for c in mine),
            "avg_response_time_ms": sum(c["duration"] for c in mine) / len(mine),
            "tokens": sum(c["total"] for c in mine),
            "cost_usd": sum(c["cost"] for c in mine if c["cost"] is not None),
        }
    by_intent = {
        intent: {
            "requests": len(mine := [c for c in calls if c["intent"] == intent]),
            "failed": sum(not c["success"] for c in mine),
            "cost_usd": sum(c["cost"] for c in mine if c["cost"] is not None),
        }
        for intent in sorted({c["intent"] for c in calls})
    }
    predictions: dict[str, Any] = defaultdict(dict)
    accuracy: dict[str, Any] = defaultdict(dict)
    for e in ml:
        if e["kind"] == "prediction":
            entry = predictions[e["model"]].setdefault(
                e["model_version"], {"total": 0, "failed": 0, "durations": [], "by_result": defaultdict(int)}
            )
            entry["total"] += 1
            entry["failed"] += not e.get("success", True)
            entry["durations"].append(e["duration_ms"])
            entry["by_result"][e.get("result") or "none"] += 1
        else:
            entry = accuracy[e["model"]].setdefault(e["model_version"], {"feedback": 0, "correct": 0})
            entry["feedback"] += 1
            entry["correct"] += e["correct"]
    for versions in predictions.values():
        for entry in versions.values():
            entry["avg_duration_ms"] = sum(entry.pop("durations")) / entry["total"]
            entry["by_result"] = dict(entry["by_result"])
    for versions in accuracy.values():
        for entry in versions.values():
            entry["accuracy"] = entry["correct"] / entry["feedback"]
    return {
        "events": {
            "llm_call": len(calls),
            "prediction": sum(e["kind"] == "prediction" for e in ml),
            "feedback": sum(e["kind"] == "feedback" for e in ml),
        },
        "requests": {
            "total": len(calls),
            "successful": ok,
            "failed": len(calls) - ok,
            "success_rate": _ratio(ok, len(calls)),
        },
        "response_time_ms": {
            "avg": _ratio(sum(durations), len(durations)),
            **{f"p{p}": _rank(durations, p) for p in (50, 95, 99)},
        },
        "tokens": {
            "total": sum(c["total"] for c in calls),
            "input": sum(c["input"] for c in calls),
            "output": sum(c["output"] for c in calls),
            "cached_input": sum(c["cached"] for c in calls),
            "reasoning": sum(c["reasoning"] for c in calls),
        },
        "cost_usd": {
            "total": sum(c["cost"] for c in priced),
            "unpriced_calls": len(calls) - len(priced),
            "by_model": {model: entry["cost_usd"] for model, entry in by_model.items()},
        },
        "appointments": {
            "requested": requested,
            "booked": booked,
            "conversion_rate": _ratio(booked, requested),
        },
        "handoffs": {"count": handoffs, "rate": _ratio(handoffs, len(calls))},
        "user_satisfaction": {"avg": None, "count": 0},
        "by_intent": by_intent,
        "by_model": by_model,
        "by_response_type": {
            kind: {"requests": sum(c["response_type"] == kind for c in calls)}
            for kind in sorted({c["response_type"] for c in calls})
        },
        "ml": {"predictions": dict(predictions), "accuracy": dict(accuracy)},
    }


def _close(actual: Any, expected: Any, where: str = "$") -> None:
    """``actual`` equals ``expected``: the same keys and counts, floats within rounding."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) >= set(expected), (where, sorted(set(expected) - set(actual)))
        for key, value in expected.items():
            _close(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert actual == expected, where


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- in-process --------------------------------------------------------------------------------


LLM = _llm_events(60, seed=1)
TRACK = _track_events(12, seed=2)
ML = _ml_events(seed=3)
CALLS = [_call(e) for e in LLM + TRACK]


async def _loaded(start_app: StartApp, **env: str) -> Any:
    app = await start_app(**env)
    response = await app.client.post("/v1/events", json=LLM + ML)
    assert (await response.json())["accepted"] == len(LLM + ML)
    for event in TRACK:
        assert (await app.client.post("/track", json=event)).status == 202
    assert app.caught_up()
    return app


async def test_the_labs_url_answers_exact_figures_of_one_business(start_app: StartApp) -> None:
    """GET /analytics/acme: every figure equals what the events sent to acme make, worked out here."""
    app = await _loaded(start_app)
    response = await app.client.get("/analytics/acme")
    assert response.status == 200
    body = await response.json()
    assert (body["business_id"], body["from"], body["to"]) == ("acme", None, None)
    ml = [e for e in ML if e["business_id"] == "acme"]
    expected = _expected([c for c in CALLS if c["business_id"] == "acme"], ml)
    _close(body, expected)
    assert set(body["by_model"]) == set(expected["by_model"])
    assert body["requests"]["total"] > 30
    assert body["cost_usd"]["unpriced_calls"] > 0


async def test_v1_analytics_covers_every_business_or_one(start_app: StartApp) -> None:
    """GET /v1/analytics without business_id sums every business; with it, that one's."""
    app = await _loaded(start_app)
    everything = await (await app.client.get("/v1/analytics")).json()
    assert everything["business_id"] is None
    _close(everything, _expected(CALLS, ML))
    globex = await (await app.client.get("/v1/analytics", params={"business_id": "globex"})).json()
    calls = [c for c in CALLS if c["business_id"] == "globex"]
    _close(globex, _expected(calls, [e for e in ML if e["business_id"] == "globex"]))


async def test_from_and_to_take_rfc3339_or_unix_seconds(start_app: StartApp) -> None:
    """from (inclusive) and to (exclusive) select the events of that range, in either notation."""
    app = await _loaded(start_app)
    start, end = BASE + HOUR, BASE + 3 * HOUR
    query = {"business_id": "acme", "from": _iso(start), "to": str(end)}
    body = await (await app.client.get("/v1/analytics", params=query)).json()
    assert (body["from"], body["to"]) == (_iso(start), _iso(end))
    calls = [c for c in CALLS if c["business_id"] == "acme" and start <= c["time"] < end]
    ml = [e for e in ML if e["business_id"] == "acme" and start <= e["timestamp"] < end]
    _close(body, _expected(calls, ml))
    assert 0 < body["requests"]["total"] < sum(c["business_id"] == "acme" for c in CALLS)


@pytest.mark.parametrize("group_by", ["hour", "day"])
async def test_group_by_gives_the_totals_of_each_bucket(start_app: StartApp, group_by: str) -> None:
    """group_by=hour|day adds a series: per UTC bucket with events, the same totals."""
    app = await _loaded(start_app)
    body = await (await app.client.get("/analytics/acme", params={"group_by": group_by})).json()
    width = HOUR if group_by == "hour" else 86_400
    calls = [c for c in CALLS if c["business_id"] == "acme"]
    ml = [e for e in ML if e["business_id"] == "acme"]
    starts = sorted(
        {c["time"] // width * width for c in calls} | {e["timestamp"] // width * width for e in ml}
    )
    assert [point["start"] for point in body["series"]] == [_iso(s) for s in starts]
    for point, bucket in zip(body["series"], starts, strict=True):
        mine = [c for c in calls if c["time"] // width * width == bucket]
        theirs = [e for e in ml if e["timestamp"] // width * width == bucket]
        ok = sum(c["success"] for c in mine)
        _close(
            point,
            {
                "requests": {"total": len(mine), "successful": ok, "failed": len(mine) - ok},
                "response_time_ms": {"avg": _ratio(sum(c["duration"] for c in mine), len(mine))},
                "tokens": sum(c["total"] for c in mine),
                "cost_usd": float(sum(c["cost"] for c in mine if c["cost"] is not None)),
                "appointments": {
                    "requested": sum(c["requested"] for c in mine),
                    "booked": sum(c["booked"] for c in mine),
                },
                "handoffs": sum(c["handoff"] for c in mine),
                "predictions": sum(e["kind"] == "prediction" for e in theirs),
                "feedback": sum(e["kind"] == "feedback" for e in theirs),
            },
        )  # fmt: skip
    assert body["requests"]["total"] == sum(point["requests"]["total"] for point in body["series"])


async def test_an_unknown_business_is_zeros(start_app: StartApp) -> None:
    """A business with no events answers 200 with zero counts and null rates (the lab's empty table)."""
    app = await _loaded(start_app)
    response = await app.client.get("/analytics/nobody")
    assert response.status == 200
    _close(await response.json(), _expected([], []))


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/analytics?from=yesterday", "from"),
        ("/v1/analytics?to=2024-13-01T00:00:00Z", "to"),
        ("/v1/analytics?from=2024-01-01T00:00:00", "from"),
        ("/v1/analytics?from=nan", "from"),
        ("/v1/analytics?to=99999999999", "to"),
        ("/v1/analytics?from=200&to=100", "from"),
        ("/v1/analytics?from=1&from=2", "from"),
        ("/v1/analytics?group_by=week", "group_by"),
        ("/v1/analytics?business=acme", "business"),
        ("/v1/analytics?business_id=", "business_id"),
        ("/v1/analytics?business_id=a%01b", "business_id"),
        ("/analytics/acme?business_id=globex", "business_id"),
        ("/analytics/" + "x" * 257, "business_id"),
    ],
)
async def test_bad_parameters_are_a_400_naming_the_parameter(
    start_app: StartApp, path: str, parameter: str
) -> None:
    """A wrong, repeated or unknown parameter is a JSON 400 whose field names it."""
    app = await start_app()
    response = await app.client.get(path)
    assert response.status == 400
    body = await response.json()
    assert (body["error"], body["field"]) == ("invalid_parameter", parameter)


def test_times_parse_as_rfc3339_or_unix_seconds() -> None:
    """Z, offsets (a '+' a query string made a space), fractions, and Unix seconds all parse to ns."""
    second = 1_700_000_000 * 1_000_000_000
    assert parse_time("from", "1700000000") == second
    assert parse_time("from", "1700000000.25") == second + 250_000_000
    assert parse_time("from", "2023-11-14T22:13:20Z") == second
    assert parse_time("from", "2023-11-15T00:13:20+02:00") == second
    assert parse_time("from", "2023-11-15T00:13:20 02:00") == second
    assert parse_time("from", "2023-11-14T22:13:20.5-00:00") == second + 500_000_000


async def test_analytics_are_behind_the_token(start_app: StartApp) -> None:
    """With OTELSVC_AUTH_TOKEN set, analytics need the bearer token like the intake endpoints."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    for path in ("/analytics/acme", "/v1/analytics"):
        assert (await app.client.get(path)).status == 401
        answer = await app.client.get(path, headers={"Authorization": "Bearer s3cret"})
        assert answer.status == 200


async def test_with_the_store_off_analytics_say_so(start_app: StartApp) -> None:
    """OTELSVC_STORE=off: no file is written and analytics answer 404 naming the setting."""
    app = await _loaded(start_app, OTELSVC_STORE="off")
    response = await app.client.get("/analytics/acme")
    assert response.status == 404
    assert "OTELSVC_STORE" in (await response.json())["message"]
    assert not (app.settings.spool_dir / "events.sqlite").exists()
    assert (await (await app.client.get("/health/detailed")).json())["export"]["store"] == {"enabled": False}


async def test_store_rows_are_counted_and_reported(start_app: StartApp) -> None:
    """otel_service_store_rows_total counts written rows; /health/detailed shows the store's size and rows."""
    app = await _loaded(start_app)
    text = (await (await app.client.get("/metrics")).read()).decode()
    written = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("otel_service_store_rows_total{") and 'outcome="written"' in line
    ]
    total = len(LLM + ML + TRACK)
    assert written == [total]
    store = (await (await app.client.get("/health/detailed")).json())["export"]["store"]
    assert (store["enabled"], store["rows"]) == (True, total)
    assert store["bytes"] > 0


async def test_token_counts_at_their_bound_still_answer(start_app: StartApp) -> None:
    """Two calls of 2^63-1 input and output tokens each: stored, and their sums answered as numbers."""
    app = await start_app()
    most = 2**63 - 1
    event = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "business_id": "big"}
    batch = [{**event, "input_tokens": most, "output_tokens": most}] * 2
    assert (await (await app.client.post("/v1/events", json=batch)).json())["accepted"] == 2
    assert app.caught_up()
    response = await app.client.get("/analytics/big")
    assert response.status == 200
    tokens = (await response.json())["tokens"]
    assert tokens["total"] == pytest.approx(4.0 * most)
    assert tokens["input"] == pytest.approx(2.0 * most)


def test_fields_of_newer_event_schemas_are_stored() -> None:
    """user_satisfaction and success_rate go to their columns when the event model carries them."""

    class Newer(LlmCall, kw_only=True):
        user_satisfaction: float | None = None
        success_rate: float | None = None

    event = Newer(model="m", duration_ms=1.0, user_satisfaction=4.5, success_rate=0.25)
    envelope = msgspec.structs.replace(_envelope(0), event=event)
    kind, values = row_of(envelope, None)
    row = dict(zip(KIND_COLUMNS[kind], values, strict=True))
    assert (row["user_satisfaction"], row["success_rate"]) == (4.5, 0.25)


def test_other_intake_processes_forward_analytics() -> None:
    """The analytics paths are among those every other intake process forwards to the first."""
    assert set(ANALYTICS_PATHS) <= set(Forwarder(Path("/nowhere")).routes())


# -- kill -9 of the whole sidecar, restarted ---------------------------------------------------


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_figures_stay_exact_after_kill_9_and_restart(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """kill -9 under load, then a restart: one row per owned event, none missing, figures exact."""
    env = {
        **FAST_EXPORT,
        "OTELSVC_EXPORT_MODE": "process",
        "OTELSVC_INTAKE_PROCESSES": "2",
        "OTELSVC_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    port = free_port()
    log = tmp_path / "serve.log"
    process = _serve(port, env, log)
    events = _llm_events(20_000, seed=7, businesses=("acme",))
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    acknowledged: list[dict[str, Any]] = []
    sent = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal sent
        for batch in batches:
            if stop.is_set():
                return
            sent += len(batch)
            if _post(port, batch) != len(batch):
                return
            acknowledged.extend(batch)

    sender = threading.Thread(target=load)
    sender.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 2000 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stop.set()
    sender.join()
    assert 0 < len(acknowledged) < len(events), "the kill must land mid-load"
    restarted = _serve(port, env, log)
    database = (tmp_path / "spool" / "events.sqlite").resolve().as_uri() + "?mode=ro"

    def stored_ids() -> list[str]:
        with contextlib.closing(sqlite3.connect(database, uri=True)) as connection:
            return [row[0] for row in connection.execute("SELECT correlation_id FROM events")]

    try:
        deadline = time.monotonic() + 60
        while True:  # the answers and the rows they were read from, with nothing written in between
            before = stored_ids()
            answers = [_get(port, "/analytics/acme") for _ in range(6)]  # through either intake process
            export = _get(port, "/health/detailed")["export"]
            stored = stored_ids()
            # (The export side's row counts come with the store process's next answer, just after.)
            counted = export["store"]["rows"] == len(stored)
            settled = before == stored and len(stored) >= len(acknowledged) and counted
            if settled and all(a["requests"]["total"] == len(stored) for a in answers):
                break
            assert time.monotonic() < deadline, "the restarted sidecar did not catch up"
            time.sleep(0.5)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(60)
    assert len(stored) == len(set(stored)), "a replayed event was stored twice"
    acked_ids = {e["correlation_id"] for e in acknowledged}
    sent_ids = {e["correlation_id"] for e in events[:sent]}
    assert acked_ids <= set(stored) <= sent_ids, "an acknowledged event is missing"
    # The request in flight at the kill may have been spooled without its answer reaching us.
    assert len(stored) - len(acked_ids) <= 25
    owned = [_call(e) for e in events if e["correlation_id"] in set(stored)]
    for body in answers:
        _close(body, _expected(owned, []))
    assert export["store"]["rows"] == export["store"]["rows_by_outcome"]["written"] == len(stored)
    assert export["dropped"] == {}
