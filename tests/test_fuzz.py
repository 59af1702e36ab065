"""A bounded mutation fuzzer over the intake endpoints: no input may get a 5xx, every 4xx is counted JSON."""

from __future__ import annotations

import pytest

from otel_service.testing import mutated_bodies

from .conftest import StartApp

SEEDS = {
    "/track": {"business_id": "b", "response_time_ms": 12, "tokens_used": 30, "prompt_tokens": 20,
               "completion_tokens": 10, "model_name": "gpt-4o", "intent_detected": "booking"},
    "/v1/events": [{"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "input_tokens": 3,
                    "attributes": {"tier": "gold"}},
                   {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 2,
                    "features": {"x": 1.5}}],
}  # fmt: skip
CASES = 400  # per endpoint: bounded, deterministic


@pytest.mark.parametrize("path", sorted(SEEDS))
async def test_mutated_bodies_never_get_a_5xx(start_app: StartApp, path: str) -> None:
    """Each mutated body: 202, or a 4xx JSON error with error and field, counted; never a 5xx."""
    app = await start_app()
    statuses: dict[int, int] = {}
    refused = 0
    for body in mutated_bodies(SEEDS[path], CASES, seed=f"fuzz:{path}"):
        response = await app.client.post(path, data=body, headers={"Content-Type": "application/json"})
        statuses[response.status] = statuses.get(response.status, 0) + 1
        assert response.status < 500, body
        answer = await response.json()
        if response.status >= 400:
            errors = answer.get("errors") or [answer]
            assert all(error["error"] and "field" in error for error in errors), (body, answer)
            refused += len(errors)
        elif path == "/v1/events":
            refused += answer["rejected"]
    detail = await (await app.client.get("/health/detailed")).json()
    assert sum(detail["events"]["rejected"].values()) == refused
    assert statuses.get(202, 0) > 0  # the seeds' valid variants still pass
