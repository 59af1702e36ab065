"""A bounded mutation fuzzer over the intake endpoints: no input may get a 5xx, every 4xx is counted JSON."""

from __future__ import annotations

import json
import random

import pytest

from .conftest import StartApp

SEEDS = {
    "/track": {"business_id": "b", "response_time_ms": 12, "tokens_used": 30, "prompt_tokens": 20,
               "completion_tokens": 10, "model_name": "gpt-4o", "intent_detected": "booking"},
    "/v1/events": [{"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "input_tokens": 3,
                    "attributes": {"tier": "gold"}},
                   {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 2,
                    "features": {"x": 1.5}}],
}  # fmt: skip
#: Values a mutation puts in place of another: wrong types, bounds, encodings, nesting.
ODD_VALUES = [None, True, -1, 2**63, 2**64, 1e309, -0.0, "", "\x00", "\ud800", "x" * 5000, [], {},
              [[[[[]]]]], {"a": {"b": {"c": {}}}}, "1" * 5000, "NaN", "2026-13-45T99:99:99Z"]  # fmt: skip
CASES = 400  # per endpoint and seed: bounded, deterministic


def _mutate(value: object, rng: random.Random) -> object:
    """``value`` with one field, item or type changed."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        copy = dict(value)
        choice = rng.random()
        if choice < 0.2:
            del copy[key]
        elif choice < 0.3:
            copy[key + "_unknown"] = copy[key]
        else:
            copy[key] = _mutate(copy[key], rng)
        return copy
    if isinstance(value, list) and value and rng.random() < 0.8:
        copy = list(value)
        index = rng.randrange(len(copy))
        copy[index] = _mutate(copy[index], rng)
        return copy
    return rng.choice(ODD_VALUES)


def _body(seed: object, rng: random.Random) -> bytes:
    """A mutated document, sometimes also damaged as bytes (truncated, a byte flipped, invalid UTF-8)."""
    document = _mutate(seed, rng)
    raw = json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")
    damage = rng.random()
    if damage < 0.1 and raw:
        raw = raw[: rng.randrange(len(raw))]
    elif damage < 0.2 and raw:
        index = rng.randrange(len(raw))
        raw = raw[:index] + bytes([rng.randrange(256)]) + raw[index + 1 :]
    elif damage < 0.25:
        raw = raw.replace(b'"', b'"\xff', 1)
    elif damage < 0.3:
        raw = b'{"a":{"x":1,"x":2},' + raw
    return raw


@pytest.mark.parametrize("path", sorted(SEEDS))
async def test_mutated_bodies_never_get_a_5xx(start_app: StartApp, path: str) -> None:
    """Each mutated body: 202, or a 4xx JSON error with error and field, counted; never a 5xx."""
    app = await start_app()
    rng = random.Random(f"fuzz:{path}")
    statuses: dict[int, int] = {}
    refused = 0
    for _ in range(CASES):
        body = _body(SEEDS[path], rng)
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
