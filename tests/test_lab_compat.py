"""The lab's client works unchanged: every MetricsData field, /refresh-metrics, /health, stray paths."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from otel_service import __version__
from otel_service.intake import status as status_endpoints
from otel_service.testing import OtlpReceiver

from .conftest import StartApp, point_values

#: Everything the lab's ``MetricsData`` (lib/mlops-tracking.ts) can carry, with fractional milliseconds.
METRICS_DATA = {
    "business_id": "lab-biz",
    "conversation_id": "conv-9",
    "session_id": "sess-9",
    "response_time_ms": 900.5,
    "success_rate": 0.75,
    "user_satisfaction": 4.5,
    "tokens_used": 150,
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "api_cost_usd": 0.002,
    "model_name": "gemini-1.5-flash",
    "intent_detected": "booking",
    "appointment_requested": True,
    "human_handoff_requested": False,
    "appointment_booked": True,
    "user_message_length": 45,
    "ai_response_length": 120,
    "response_type": "appointment_booking",
}
TENANT = frozenset({("business_id", "lab-biz")})


async def test_track_takes_every_metrics_data_field_and_records_the_new_ones(
    receiver: OtlpReceiver, start_app: StartApp
) -> None:
    """user_satisfaction, fractional ms and a 0..1 success_rate: accepted, and on metrics, span and log."""
    app = await start_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
    response = await app.client.post("/track", json=METRICS_DATA)
    assert response.status == 202, await response.text()
    assert app.caught_up()

    data = app.metrics()
    satisfaction = point_values(data, "ai.user_satisfaction")[TENANT]
    success_rate = point_values(data, "ai.success_rate")[TENANT]
    assert (satisfaction.count, satisfaction.sum, success_rate.count, success_rate.sum) == (1, 4.5, 1, 0.75)
    assert point_values(data, "ai_response_time")[TENANT].sum == pytest.approx(0.9005)
    text = await (await app.client.get("/metrics")).text()
    assert re.search(r'^ai_user_satisfaction_sum\{business_id="lab-biz",.*\} 4\.5$', text, re.M)
    assert re.search(r'^ai_success_rate_count\{business_id="lab-biz",.*\} 1\.0$', text, re.M)

    [line] = app.log_lines()
    record = orjson.loads(line)
    assert (record["success_rate"], record["user_satisfaction"], record["duration_ms"]) == (0.75, 4.5, 900.5)
    assert receiver.wait_for_spans(1)
    [span] = receiver.spans()
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert (attrs["app.success_rate"].double_value, attrs["app.user_satisfaction"].double_value) == (
        0.75,
        4.5,
    )
    assert span.end_time_unix_nano - span.start_time_unix_nano == 900_500_000


async def test_native_llm_calls_carry_the_new_fields_and_unknown_fields_stay_refused(
    start_app: StartApp,
) -> None:
    """/v1/events takes success_rate and user_satisfaction on llm_call only; other unknown fields refused."""
    app = await start_app()
    llm = {"kind": "llm_call", "model": "m", "duration_ms": 1.5, "success_rate": 1, "user_satisfaction": 3}
    prediction = {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 1}
    body = [llm, {**prediction, "user_satisfaction": 3}, {**llm, "satisfaction": 3}]
    answer = await (await app.client.post("/v1/events", json=body)).json()
    assert answer["accepted"] == 1
    assert [(e["index"], e["field"], e["error"]) for e in answer["errors"]] == [
        (1, "$[1].user_satisfaction", "unknown_field"),
        (2, "$[2].satisfaction", "unknown_field"),
    ]
    track = await app.client.post("/track", json={**METRICS_DATA, "satisfaction": 3})
    assert (track.status, (await track.json())["field"]) == (400, "$.satisfaction")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("user_satisfaction", 5.5),
        ("user_satisfaction", -1),
        ("user_satisfaction", "5"),
        ("success_rate", 1.2),
    ],
)
async def test_out_of_range_lab_scores_are_a_4xx_naming_the_field(
    start_app: StartApp, name: str, value: object
) -> None:
    """A satisfaction outside 0..5 or a success rate outside 0..1 is refused with the field's path."""
    app = await start_app()
    response = await app.client.post("/track", json={**METRICS_DATA, name: value})
    assert response.status == 400
    answer = await response.json()
    assert (answer["error"], answer["field"]) == ("invalid_field", f"$.{name}")


async def test_refresh_metrics_answers_the_labs_body_and_counts_no_failure(start_app: StartApp) -> None:
    """POST /refresh-metrics: 200, the lab's status/message/timestamp, saying totals are continuous."""
    app = await start_app()
    response = await app.client.post("/refresh-metrics", json={"trigger": "new_metrics"})
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"status", "message", "timestamp"}
    assert body["status"] == "success"
    assert "nothing to rebuild" in body["message"]
    assert "continuous" in body["message"]
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert (await app.client.post("/refresh-metrics")).status == 200  # no body, no content type
    detail = await (await app.client.get("/health/detailed")).json()
    assert (detail["requests"]["failed"], detail["events"]["rejected"]) == (0, {})


async def test_refresh_metrics_is_behind_the_token(start_app: StartApp) -> None:
    """With a token set, /refresh-metrics needs it, as /track does."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    assert (await app.client.post("/refresh-metrics", json={})).status == 401
    right = await app.client.post("/refresh-metrics", json={}, headers={"Authorization": "Bearer s3cret"})
    assert right.status == 200


async def test_health_carries_the_labs_fields_and_the_version(start_app: StartApp) -> None:
    """GET /health: status, service, timestamp and monitoring as the lab's, plus the version."""
    app = await start_app(OTEL_SERVICE_NAME="lab-sidecar")
    response = await app.client.get("/health")
    assert response.status == 200
    body = await response.json()
    timestamp = body.pop("timestamp")
    assert body == {
        "status": "healthy",
        "service": "lab-sidecar",
        "version": __version__,
        "monitoring": "prometheus",
    }
    assert datetime.fromisoformat(timestamp).tzinfo is not None


class _FailedExport:
    """An export side that is down for good."""

    def failed(self) -> bool:
        return True


async def test_unhealthy_health_is_503_with_the_labs_fields() -> None:
    """When the export side cannot be started again, /health is 503 and keeps the lab's fields."""
    status: Any = SimpleNamespace(
        export=_FailedExport(), service=SimpleNamespace(settings=SimpleNamespace(service_name="svc"))
    )
    response = await status_endpoints.health(status, None)  # type: ignore[arg-type]
    assert response.status == 503
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert set(body) == {"status", "service", "version", "timestamp", "monitoring", "problems"}
    assert (body["status"], body["service"], body["monitoring"]) == ("unhealthy", "svc", "prometheus")
    assert body["problems"] == ["export process cannot start"]


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_paths_outside_the_api_are_neither_failures_nor_rejections(
    start_app: StartApp, token: str | None
) -> None:
    """Unknown paths get a JSON 404 (401 with a token), timed as "unmatched", and counted nowhere else."""
    app = await start_app(**({"OTELSVC_AUTH_TOKEN": token} if token else {}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, path in [("GET", "/apple-touch-icon.png"), ("GET", "/nope"), ("POST", "/v2/events")]:
        response = await app.client.request(method, path)
        assert response.status == (401 if token else 404)
        assert "error" in await response.json()
    assert (await app.client.post("/track", json=METRICS_DATA, headers=headers)).status == 202
    detail = await (await app.client.get("/health/detailed", headers=headers)).json()
    assert detail["requests"]["failed"] == 0
    assert detail["requests"]["error_rate_percent"] == 0.0
    assert detail["requests"]["total"] == 2  # /track and this /health/detailed
    assert detail["events"]["rejected"] == {}
    text = await (await app.client.get("/metrics", headers=headers)).text()
    assert "otel_service_events_rejected_total{" not in text
    unmatched = [
        line
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{") and 'http_route="unmatched"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in unmatched) == 3


async def test_a_browser_opening_the_dashboard_meets_no_404(start_app: StartApp) -> None:
    """The dashboard links its own SVG icon at /favicon.ico, and every path the page names is served."""
    app = await start_app()
    page = await (await app.client.get("/")).text()
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in page
    named = set(re.findall(r'(?:href|src)="(/[^"]*)"|fetch\("(/[^"]*)"\)', page))
    paths = {path for pair in named for path in pair if path}
    assert "/favicon.ico" in paths
    for path in sorted(paths | {"/favicon.ico"}):
        assert (await app.client.get(path)).status == 200, path
    icon = await app.client.get("/favicon.ico")
    assert icon.headers["Content-Type"] == "image/svg+xml"
    assert (await icon.read()).startswith(b"<svg ")
    detail = await (await app.client.get("/health/detailed")).json()
    assert (detail["requests"]["failed"], detail["events"]["rejected"]) == (0, {})


async def test_the_icon_is_served_without_the_token(start_app: StartApp) -> None:
    """A browser asks any page's /favicon.ico without credentials: it is served, like the probes."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    assert (await app.client.get("/favicon.ico")).status == 200


def test_openapi_documents_the_lab_endpoints_and_fields() -> None:
    """The committed OpenAPI document has /refresh-metrics, /health's lab fields and the new /track fields."""
    document = json.loads((Path(__file__).parent.parent / "openapi.json").read_text())
    schemas = document["components"]["schemas"]
    track = schemas["LabTrack"]["properties"]
    assert track["response_time_ms"]["type"] == "number"
    [satisfaction, _] = track["user_satisfaction"]["anyOf"]
    assert (satisfaction["minimum"], satisfaction["maximum"]) == (0, 5)
    assert {"success_rate", "user_satisfaction"} <= set(schemas["LlmCall"]["properties"])
    refresh = document["paths"]["/refresh-metrics"]["post"]["responses"]["200"]
    assert refresh["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Refresh"}
    assert set(schemas["Health"]["required"]) == {"status", "service", "version", "timestamp", "monitoring"}
    assert set(document["paths"]["/health"]["get"]["responses"]) == {"200", "503"}
