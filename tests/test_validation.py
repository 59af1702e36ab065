"""Strict parsing of request bodies: tables of valid and invalid inputs for /track and /v1/events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from otel_service import Feedback, LabTrack, LlmCall, Prediction
from otel_service.model import validation as _validation
from otel_service.model.errors import InvalidEvent
from otel_service.model.validation import Limits, ParsedItem, parse_batch, parse_track

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
NOW_DT = datetime.fromtimestamp(NOW, UTC)
LIMITS = Limits()
INT64_MAX = 2**63 - 1

LAB = {"business_id": "acme", "response_time_ms": 1500, "tokens_used": 150}
LLM = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 250}
PREDICTION = {"kind": "prediction", "model": "churn", "model_version": "v2", "duration_ms": 30}
FEEDBACK = {"kind": "feedback", "model": "churn", "model_version": "v2", "correct": True}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

#: One parsed item as (index, event kind, (error field, error reason)).
Row = tuple[int, str | None, tuple[str | None, str] | None]


def _iso(delta: timedelta, *, suffix: str = "Z") -> str:
    return (NOW_DT + delta).strftime("%Y-%m-%dT%H:%M:%S") + suffix


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _track_error(body: bytes, limits: Limits = LIMITS) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_track(body, NOW, limits)
    assert info.value.message
    return info.value


def _batch_error(body: bytes, *, ndjson: bool = False, limits: Limits = LIMITS) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_batch(body, ndjson=ndjson, now=NOW, limits=limits)
    assert info.value.message
    return info.value


def _summary(items: list[ParsedItem]) -> list[Row]:
    """Each item as (index, event kind, (error field, error reason)); error messages must be non-empty."""
    out: list[Row] = []
    for item in items:
        assert (item.event is None) != (item.error is None)
        if item.error is not None:
            assert item.error.message
            out.append((item.index, None, (item.error.field, item.error.reason)))
        else:
            out.append((item.index, str(type(item.event).__struct_config__.tag), None))
    return out


def _single(obj: Any) -> list[Row]:
    return _summary(parse_batch(_dumps(obj), ndjson=False, now=NOW, limits=LIMITS))


# -- /track: invalid inputs --------------------------------------------------------------------------

_LAB_INT_FIELDS = [
    "tokens_used",
    "prompt_tokens",
    "completion_tokens",
    "user_message_length",
    "ai_response_length",
]
_LAB_FLOAT_FIELDS = ["response_time_ms", "success_rate", "user_satisfaction", "api_cost_usd"]
_LAB_IDENTS = ["business_id", "conversation_id", "session_id", "correlation_id"]
_LAB_LABELS = ["model_name", "intent_detected", "response_type"]

TRACK_INVALID_FIELDS: list[Any] = [
    *[
        pytest.param({k: v for k, v in LAB.items() if k != name}, name, "missing_field", id=f"missing-{name}")
        for name in LAB
    ],
    *[
        pytest.param({**LAB, name: value}, name, "invalid_field", id=f"{name}-{label}")
        for name in _LAB_INT_FIELDS
        for label, value in [
            ("bool", True),
            ("false", False),
            ("string", "10"),
            ("float", 1.5),
            ("integral-float", 10.0),
            ("negative", -1),
            ("beyond-int64", INT64_MAX + 1),
            ("far-beyond-int64", 10**30),
            ("object", {"n": 1}),
        ]
    ],
    *[
        pytest.param({**LAB, name: value}, name, "invalid_field", id=f"{name}-{label}")
        for name in _LAB_FLOAT_FIELDS
        for label, value in [("bool", True), ("string", "0.5"), ("negative", -0.01), ("list", [1.0])]
    ],
    pytest.param({**LAB, "response_time_ms": None}, "response_time_ms", "invalid_field", id="required-null"),
    pytest.param(
        {**LAB, "response_time_ms": 86_400_001}, "response_time_ms", "invalid_field", id="over-a-day"
    ),
    pytest.param({**LAB, "success_rate": 1.5}, "success_rate", "invalid_field", id="success_rate-above-1"),
    pytest.param(
        {**LAB, "user_satisfaction": 5.5},
        "user_satisfaction",
        "invalid_field",
        id="user_satisfaction-above-5",
    ),
    pytest.param(
        {**LAB, "user_satisfaction": 80}, "user_satisfaction", "invalid_field", id="user_satisfaction-percent"
    ),
    pytest.param({**LAB, "api_cost_usd": 1e7}, "api_cost_usd", "invalid_field", id="cost-absurd"),
    pytest.param({**LAB, "appointment_booked": 1}, "appointment_booked", "invalid_field", id="int-for-bool"),
    pytest.param(
        {**LAB, "human_handoff_requested": "true"},
        "human_handoff_requested",
        "invalid_field",
        id="string-for-bool",
    ),
    *[
        pytest.param({**LAB, name: value}, name, "invalid_field", id=f"{name}-{label}")
        for name in _LAB_IDENTS + _LAB_LABELS
        for label, value in [
            ("nul", "a\x00b"),
            ("tab", "a\tb"),
            ("unit-separator", "a\x1fb"),
            ("del", "a\x7fb"),
            ("leading-newline", "\nab"),
            ("empty", ""),
            ("number", 12),
        ]
    ],
    pytest.param({**LAB, "business_id": "ab\n"}, "business_id", "invalid_field", id="ident-trailing-newline"),
    pytest.param({**LAB, "model_name": "m\n"}, "model_name", "invalid_field", id="label-trailing-newline"),
    pytest.param({**LAB, "business_id": "x" * 257}, "business_id", "invalid_field", id="ident-257-chars"),
    pytest.param({**LAB, "model_name": "m" * 129}, "model_name", "invalid_field", id="label-129-chars"),
    pytest.param({**LAB, "kind": "llm_call"}, "kind", "unknown_field", id="kind-is-not-a-lab-field"),
    pytest.param({**LAB, "surprise": 1}, "surprise", "unknown_field", id="unknown-field"),
    pytest.param(
        {**LAB, "timestamp": _iso(timedelta(minutes=-5), suffix="")},
        "timestamp",
        "invalid_field",
        id="naive-timestamp",
    ),
    pytest.param({**LAB, "timestamp": "yesterday"}, "timestamp", "invalid_field", id="timestamp-garbage"),
    pytest.param({**LAB, "timestamp": True}, "timestamp", "invalid_field", id="timestamp-bool"),
    pytest.param({**LAB, "timestamp": NOW * 1000}, "timestamp", "invalid_field", id="timestamp-in-ms"),
    pytest.param(
        {**LAB, "timestamp": NOW - 86_401}, "timestamp", "timestamp_out_of_range", id="epoch-too-old"
    ),
    pytest.param(
        {**LAB, "timestamp": NOW + 301}, "timestamp", "timestamp_out_of_range", id="epoch-too-far-ahead"
    ),
    pytest.param(
        {**LAB, "timestamp": _iso(timedelta(days=-2))},
        "timestamp",
        "timestamp_out_of_range",
        id="rfc3339-too-old",
    ),
    pytest.param(
        {**LAB, "timestamp": _iso(timedelta(hours=1))},
        "timestamp",
        "timestamp_out_of_range",
        id="rfc3339-too-far-ahead",
    ),
]


@pytest.mark.parametrize(("obj", "name", "reason"), TRACK_INVALID_FIELDS)
def test_track_refuses_a_bad_field_and_names_it(obj: dict[str, Any], name: str, reason: str) -> None:
    """A wrong, missing, unknown or out-of-range lab field is refused with its JSON path and reason."""
    error = _track_error(_dumps(obj))
    assert (error.field, error.reason) == (f"$.{name}", reason)


_LAB_RAW = b'"business_id":"acme","response_time_ms":1500'


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        pytest.param(b"{" + _LAB_RAW + b',"tokens_used":NaN}', "$.tokens_used", "invalid_number", id="NaN"),
        pytest.param(
            b"{" + _LAB_RAW + b',"tokens_used":Infinity}', "$.tokens_used", "invalid_number", id="Infinity"
        ),
        pytest.param(
            b"{" + _LAB_RAW + b',"tokens_used":-Infinity}', "$.tokens_used", "invalid_number", id="-Infinity"
        ),
        pytest.param(
            b"{" + _LAB_RAW + b',"tokens_used":1e999}', "$.tokens_used", "invalid_number", id="1e999"
        ),
        pytest.param(
            b"{" + _LAB_RAW + b',"api_cost_usd":-1e999,"tokens_used":1}',
            "$.api_cost_usd",
            "invalid_number",
            id="-1e999",
        ),
        pytest.param(
            b'{"business_id":"\\ud800","response_time_ms":1,"tokens_used":1}',
            "$.business_id",
            "invalid_string",
            id="lone-high-surrogate",
        ),
        pytest.param(
            b'{"business_id":"\\udc00","response_time_ms":1,"tokens_used":1}',
            "$.business_id",
            "invalid_string",
            id="lone-low-surrogate",
        ),
        pytest.param(
            b'{"business_id":"\\ude00\\ud83d","response_time_ms":1,"tokens_used":1}',
            "$.business_id",
            "invalid_string",
            id="reversed-pair",
        ),
        pytest.param(
            b"{" + _LAB_RAW + b',"tokens_used":1,"tokens_used":2}',
            "$.tokens_used",
            "duplicate_key",
            id="duplicate-key",
        ),
        pytest.param(b"{" + _LAB_RAW + b',"tokens_used":1} {}', "$", "malformed_json", id="trailing-object"),
        pytest.param(b"{" + _LAB_RAW + b',"tokens_used":1}x', "$", "malformed_json", id="trailing-garbage"),
        pytest.param(b"{" + _LAB_RAW + b',"tokens_used":1', "$", "malformed_json", id="truncated"),
        pytest.param(b"{" + _LAB_RAW + b",'tokens_used':1}", "$", "malformed_json", id="single-quotes"),
        pytest.param(
            b'{"business_id":"a\tb","response_time_ms":1,"tokens_used":1}',
            "$.business_id",
            "malformed_json",
            id="raw-control-char-in-string",
        ),
        pytest.param(b"", "$", "malformed_json", id="empty"),
        pytest.param(b"\xff\xfe{}", "$", "invalid_encoding", id="not-utf8"),
        pytest.param(b"[]", "$", "invalid_field", id="array"),
        pytest.param(b'"acme"', "$", "invalid_field", id="string"),
        pytest.param(b"null", "$", "invalid_field", id="null"),
        pytest.param(
            b'{"business_id":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "$.business_id" + "[0]" * 31,  # the value 32 levels down
            "too_deep",
            id="recursion-bomb",
        ),
    ],
)
def test_track_refuses_a_bad_body(body: bytes, field: str, reason: str) -> None:
    """Bodies that are not one strict JSON object (non-finite numbers, lone surrogates...) are refused."""
    error = _track_error(body)
    assert (error.field, error.reason) == (field, reason)


def test_track_refuses_an_integer_literal_too_long_to_convert() -> None:
    """An integer literal of thousands of digits is an InvalidEvent, not an unexpected ValueError."""
    body = b"{" + _LAB_RAW + b',"tokens_used":1' + b"0" * 5000 + b"}"
    error = _track_error(body)
    assert (error.field, error.reason) == ("$.tokens_used", "invalid_number")


# -- /track: valid inputs and the lab -> native mapping ---------------------------------------------


def _expected(**changes: Any) -> dict[str, Any]:
    base = LlmCall(
        model="gemini-1.5-flash",
        duration_ms=1500.0,
        total_tokens=150,
        business_id="acme",
        intent="unknown",
        response_type="unknown",
    )
    return msgspec.structs.asdict(msgspec.structs.replace(base, **changes))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(_dumps(LAB), _expected(), id="minimal"),
        pytest.param(b" \r\n\t" + _dumps(LAB), _expected(), id="leading-whitespace"),
        pytest.param(_dumps(LAB) + b" \r\n\t", _expected(), id="trailing-whitespace"),
        pytest.param(
            b'{"business_id":"\\ud83d\\ude00","response_time_ms":1500,"tokens_used":150}',
            _expected(business_id="\U0001f600"),
            id="escaped-surrogate-pair",
        ),
        pytest.param(
            _dumps({**LAB, "business_id": "\U0001f600"}),
            _expected(business_id="\U0001f600"),
            id="raw-astral-char",
        ),
        pytest.param(
            b'{"business_id":"\\\\ud800","response_time_ms":1500,"tokens_used":150}',
            _expected(business_id="\\ud800"),
            id="escaped-backslash-not-a-surrogate",
        ),
        pytest.param(
            _dumps({**LAB, "business_id": "x" * 256}), _expected(business_id="x" * 256), id="ident-256-chars"
        ),
        pytest.param(
            _dumps({**LAB, "tokens_used": INT64_MAX}), _expected(total_tokens=INT64_MAX), id="int64-max"
        ),
        pytest.param(_dumps({**LAB, "api_cost_usd": 0}), _expected(cost_usd=0.0), id="int-for-float"),
        pytest.param(
            _dumps({**LAB, "success_rate": 0.0}),
            _expected(success=False, success_rate=0.0),
            id="success-rate-0",
        ),
        pytest.param(_dumps({**LAB, "success_rate": 1}), _expected(success_rate=1.0), id="success-rate-1"),
        pytest.param(
            _dumps({**LAB, "success_rate": 0.75}), _expected(success_rate=0.75), id="success-rate-kept"
        ),
        pytest.param(
            _dumps({**LAB, "response_time_ms": 900.5}), _expected(duration_ms=900.5), id="fractional-ms"
        ),
        pytest.param(
            _dumps({**LAB, "user_satisfaction": 4.5}),
            _expected(user_satisfaction=4.5),
            id="satisfaction-rating",
        ),
        pytest.param(
            _dumps({**LAB, "user_satisfaction": 0}), _expected(user_satisfaction=0.0), id="satisfaction-zero"
        ),
        pytest.param(
            _dumps({**LAB, "timestamp": _iso(timedelta(minutes=-5))}),
            _expected(timestamp=NOW_DT.replace(microsecond=0) - timedelta(minutes=5)),
            id="rfc3339-Z",
        ),
        pytest.param(
            _dumps({**LAB, "timestamp": _iso(timedelta(hours=2, minutes=-5), suffix="+02:00")}),
            _expected(
                timestamp=(NOW_DT.replace(microsecond=0) + timedelta(hours=2, minutes=-5)).replace(
                    tzinfo=timezone(timedelta(hours=2))
                )
            ),
            id="rfc3339-offset",
        ),
        pytest.param(
            _dumps({**LAB, "timestamp": NOW - 86_399}),
            _expected(timestamp=NOW - 86_399),
            id="epoch-almost-a-day-old",
        ),
        pytest.param(
            _dumps({**LAB, "timestamp": int(NOW) + 299}),
            _expected(timestamp=float(int(NOW) + 299)),
            id="epoch-int-slightly-ahead",
        ),
    ],
)
def test_track_accepts_valid_bodies(body: bytes, expected: dict[str, Any]) -> None:
    """Valid /track bodies parse into the expected native LLM call."""
    assert msgspec.structs.asdict(parse_track(body, NOW, LIMITS)) == expected


FULL_LAB = {
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
    "human_handoff_requested": True,
    "appointment_booked": False,
    "user_message_length": 45,
    "ai_response_length": 120,
    "response_type": "text",
    "model_name": "gemini-2.5-pro",
    "success_rate": 1.0,
    "user_satisfaction": 4.0,
    "correlation_id": "req-1",
    "timestamp": NOW - 10,
}


def test_lab_track_maps_every_field_to_the_native_llm_call() -> None:
    """Every lab field lands in its native counterpart; nothing else is set."""
    track = msgspec.convert(FULL_LAB, LabTrack, strict=True)
    assert msgspec.structs.asdict(track.to_llm_call()) == msgspec.structs.asdict(
        LlmCall(
            model="gemini-2.5-pro",
            duration_ms=1500.0,
            operation="chat",
            input_tokens=120,
            output_tokens=30,
            total_tokens=150,
            cost_usd=0.002,
            success=True,
            success_rate=1.0,
            user_satisfaction=4.0,
            intent="general",
            response_type="text",
            business_id="test-business",
            conversation_id="conv-123",
            session_id="session-456",
            appointment_requested=True,
            appointment_booked=False,
            human_handoff=True,
            user_message_length=45,
            response_length=120,
            correlation_id="req-1",
            timestamp=NOW - 10,
        )
    )
    assert type(track.to_llm_call().duration_ms) is float


@pytest.mark.parametrize(("rate", "success"), [(0.0, False), (0.2, False), (0.8, True), (1.0, True)])
def test_lab_success_rate_maps_to_success(rate: float, success: bool) -> None:
    """The lab's success_rate (0.0 for a failed call) becomes the native boolean success."""
    track = msgspec.convert({**LAB, "success_rate": rate}, LabTrack, strict=True)
    assert track.to_llm_call().success is success


def test_lab_defaults_map_to_the_lab_defaults() -> None:
    """Absent lab fields take the lab's defaults: gemini-1.5-flash, intent and response type unknown."""
    track = msgspec.convert(LAB, LabTrack, strict=True)
    call = track.to_llm_call()
    assert (call.model, call.intent, call.response_type, call.success) == (
        "gemini-1.5-flash",
        "unknown",
        "unknown",
        True,
    )
    assert msgspec.structs.asdict(call) == _expected()


# -- /v1/events: one object, field-level errors -----------------------------------------------------

_LLM_INT_FIELDS = [
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "total_tokens",
    "user_message_length",
    "response_length",
]

EVENT_INVALID_FIELDS: list[Any] = [
    *[
        pytest.param(
            {k: v for k, v in base.items() if k != name},
            name,
            "missing_field",
            id=f"{base['kind']}-missing-{name}",
        )
        for base in (LLM, PREDICTION, FEEDBACK)
        for name in base
    ],
    *[
        pytest.param({**LLM, name: value}, name, "invalid_field", id=f"{name}-{label}")
        for name in _LLM_INT_FIELDS
        for label, value in [
            ("bool", True),
            ("string", "1"),
            ("float", 1.5),
            ("integral-float", 1.0),
            ("negative", -1),
            ("beyond-int64", INT64_MAX + 1),
        ]
    ],
    *[
        pytest.param({**base, name: value}, name, "invalid_field", id=f"{base['kind']}-{name}-{label}")
        for base, name in [
            (LLM, "duration_ms"),
            (LLM, "cost_usd"),
            (PREDICTION, "duration_ms"),
            (PREDICTION, "confidence"),
        ]
        for label, value in [("bool", True), ("string", "1"), ("negative", -1)]
    ],
    pytest.param({**LLM, "duration_ms": None}, "duration_ms", "invalid_field", id="required-null"),
    pytest.param({**PREDICTION, "confidence": 1.01}, "confidence", "invalid_field", id="confidence-above-1"),
    pytest.param(
        {**LLM, "duration_ms": 86_400_001}, "duration_ms", "invalid_field", id="duration-over-a-day"
    ),
    pytest.param({**LLM, "success": 1}, "success", "invalid_field", id="int-for-bool"),
    pytest.param({**FEEDBACK, "correct": "yes"}, "correct", "invalid_field", id="string-for-bool"),
    pytest.param({**LLM, "operation": "dance"}, "operation", "invalid_field", id="unknown-operation"),
    pytest.param({**LLM, "kind": "llm-call"}, "kind", "invalid_field", id="unknown-kind"),
    pytest.param({k: v for k, v in LLM.items() if k != "kind"}, "kind", "missing_field", id="missing-kind"),
    pytest.param({**LLM, "surprise": 1}, "surprise", "unknown_field", id="unknown-field"),
    pytest.param({**FEEDBACK, "duration_ms": 1}, "duration_ms", "unknown_field", id="field-of-another-kind"),
    pytest.param({**LLM, "model": 4}, "model", "invalid_field", id="model-number"),
    *[
        pytest.param({**LLM, name: value}, name, "invalid_field", id=f"{name}-{label}")
        for name in ("conversation_id", "session_id", "user_id", "business_id", "correlation_id", "model")
        for label, value in [("nul", "\x00"), ("escape", "a\x1b[31m"), ("newline", "a\nb")]
    ],
    pytest.param({**LLM, "user_id": "u\n"}, "user_id", "invalid_field", id="ident-trailing-newline"),
    pytest.param({**LLM, "conversation_id": "c" * 257}, "conversation_id", "invalid_field", id="ident-257"),
    pytest.param(
        {**LLM, "success": True, "error_type": "timeout"},
        "error_type",
        "invalid_field",
        id="error_type-with-success",
    ),
    pytest.param(
        {**LLM, "error_type": "timeout"}, "error_type", "invalid_field", id="error_type-with-default-success"
    ),
    pytest.param(
        {**PREDICTION, "error_type": "oom"},
        "error_type",
        "invalid_field",
        id="prediction-error_type-with-success",
    ),
    pytest.param({**LLM, "trace_id": TRACE_ID}, "span_id", "invalid_field", id="trace_id-without-span_id"),
    pytest.param({**LLM, "span_id": SPAN_ID}, "trace_id", "invalid_field", id="span_id-without-trace_id"),
    pytest.param(
        {**LLM, "trace_id": TRACE_ID.upper(), "span_id": SPAN_ID},
        "trace_id",
        "invalid_field",
        id="trace_id-uppercase",
    ),
    pytest.param(
        {**LLM, "trace_id": TRACE_ID, "span_id": SPAN_ID.upper()},
        "span_id",
        "invalid_field",
        id="span_id-uppercase",
    ),
    pytest.param(
        {**LLM, "trace_id": TRACE_ID[:-1], "span_id": SPAN_ID},
        "trace_id",
        "invalid_field",
        id="trace_id-31-chars",
    ),
    pytest.param(
        {**LLM, "trace_id": TRACE_ID[:-1] + "\n", "span_id": SPAN_ID},
        "trace_id",
        "invalid_field",
        id="trace_id-trailing-newline",
    ),
    pytest.param(
        {**LLM, "attributes": {f"k{i}": i for i in range(65)}},
        "attributes",
        "invalid_field",
        id="65-attributes",
    ),
    pytest.param(
        {**PREDICTION, "features": {f"f{i}": 1.0 for i in range(65)}},
        "features",
        "invalid_field",
        id="65-features",
    ),
    pytest.param(
        {**LLM, "attributes": {"k": "v" * 4097}},
        "attributes[...]",
        "invalid_field",
        id="attribute-value-4097",
    ),
    pytest.param(
        {**LLM, "attributes": {"k": {"nested": 1}}},
        "attributes[...]",
        "invalid_field",
        id="attribute-nested-object",
    ),
    pytest.param(
        {**LLM, "attributes": {"k": [1, 2]}}, "attributes[...]", "invalid_field", id="attribute-list"
    ),
    pytest.param({**LLM, "attributes": {"k": None}}, "attributes[...]", "invalid_field", id="attribute-null"),
    pytest.param(
        {**LLM, "attributes": {"k": INT64_MAX + 1}},
        "attributes[...]",
        "invalid_field",
        id="attribute-beyond-int64",
    ),
    pytest.param(
        {**LLM, "attributes": {"bad key": 1}}, "attributes", "invalid_field", id="attribute-key-space"
    ),
    pytest.param(
        {**LLM, "attributes": {"key\n": 1}},
        "attributes",
        "invalid_field",
        id="attribute-key-trailing-newline",
    ),
    pytest.param(
        {**LLM, "attributes": {"k" * 129: 1}}, "attributes", "invalid_field", id="attribute-key-129"
    ),
    pytest.param({**LLM, "attributes": []}, "attributes", "invalid_field", id="attributes-list"),
    pytest.param(
        {**PREDICTION, "features": {"f": True}}, "features[...]", "invalid_field", id="feature-bool"
    ),
    pytest.param(
        {**PREDICTION, "features": {"f": "1"}}, "features[...]", "invalid_field", id="feature-string"
    ),
    pytest.param(
        {**LLM, "timestamp": _iso(timedelta(minutes=-5), suffix="")},
        "timestamp",
        "invalid_field",
        id="naive-timestamp",
    ),
    pytest.param({**LLM, "timestamp": -1}, "timestamp", "invalid_field", id="negative-epoch"),
    pytest.param(
        {**LLM, "timestamp": NOW - 86_401}, "timestamp", "timestamp_out_of_range", id="epoch-too-old"
    ),
    pytest.param({**LLM, "timestamp": NOW + 301}, "timestamp", "timestamp_out_of_range", id="epoch-ahead"),
    pytest.param(
        {**FEEDBACK, "timestamp": _iso(timedelta(days=-3))},
        "timestamp",
        "timestamp_out_of_range",
        id="rfc3339-too-old",
    ),
    pytest.param(
        {**PREDICTION, "timestamp": _iso(timedelta(minutes=6))},
        "timestamp",
        "timestamp_out_of_range",
        id="rfc3339-ahead",
    ),
]


@pytest.mark.parametrize(("obj", "name", "reason"), EVENT_INVALID_FIELDS)
def test_event_refuses_a_bad_field_and_names_it(obj: dict[str, Any], name: str, reason: str) -> None:
    """An event with one bad field is one rejected item naming that field and why."""
    assert _single(obj) == [(0, None, (f"$.{name}", reason))]


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        pytest.param(LLM, "llm_call", id="llm-minimal"),
        pytest.param(PREDICTION, "prediction", id="prediction-minimal"),
        pytest.param(FEEDBACK, "feedback", id="feedback-minimal"),
        pytest.param({**LLM, "duration_ms": 0, "input_tokens": 0, "cost_usd": 0}, "llm_call", id="zeros"),
        pytest.param({**LLM, "input_tokens": INT64_MAX}, "llm_call", id="int64-max"),
        pytest.param(
            {**LLM, "success": False, "error_type": "timeout"}, "llm_call", id="error-type-on-failure"
        ),
        pytest.param({**LLM, "trace_id": TRACE_ID, "span_id": SPAN_ID}, "llm_call", id="trace-and-span"),
        pytest.param({**LLM, "attributes": {f"k{i}": i for i in range(64)}}, "llm_call", id="64-attributes"),
        pytest.param({**LLM, "attributes": {"k": "v" * 4096}}, "llm_call", id="attribute-value-4096"),
        pytest.param(
            {**LLM, "attributes": {"s": "x", "b": True, "i": -(2**63), "f": -1.5, "e": ""}},
            "llm_call",
            id="attribute-types",
        ),
        pytest.param(
            {**LLM, "attributes": {"k": "\U0001f600\x00\n"}}, "llm_call", id="attribute-value-any-text"
        ),
        pytest.param(
            {**PREDICTION, "features": {f"f{i}": i / 2 for i in range(64)}}, "prediction", id="64-features"
        ),
        pytest.param({**PREDICTION, "confidence": 1}, "prediction", id="int-confidence"),
        pytest.param({**LLM, "conversation_id": "c" * 256}, "llm_call", id="ident-256"),
        pytest.param({**LLM, "timestamp": _iso(timedelta(minutes=-1))}, "llm_call", id="rfc3339-Z"),
        pytest.param(
            {**LLM, "timestamp": _iso(timedelta(hours=-5, minutes=-1), suffix="-05:00")},
            "llm_call",
            id="rfc3339-negative-offset",
        ),
        pytest.param({**LLM, "timestamp": NOW - 60}, "llm_call", id="epoch-float"),
        pytest.param({**LLM, "timestamp": int(NOW)}, "llm_call", id="epoch-int"),
    ],
)
def test_event_accepts_valid_objects(obj: dict[str, Any], kind: str) -> None:
    """Valid events of each kind are accepted as one item of their kind."""
    assert _single(obj) == [(0, kind, None)]


def test_event_is_parsed_into_the_native_structure() -> None:
    """A native event parses into exactly the struct its fields describe."""
    body = _dumps(
        {
            **PREDICTION,
            "result": "stay",
            "confidence": 0.9,
            "features": {"age": 3},
            "attributes": {"team": "x"},
            "timestamp": NOW - 1,
        }
    )
    [item] = parse_batch(body, ndjson=False, now=NOW, limits=LIMITS)
    assert item == ParsedItem(
        0,
        event=Prediction(
            model="churn",
            model_version="v2",
            duration_ms=30.0,
            result="stay",
            confidence=0.9,
            features={"age": 3.0},
            attributes={"team": "x"},
            timestamp=NOW - 1,
        ),
    )
    assert isinstance(item.event, Prediction)
    assert type(item.event.features["age"]) is float


# -- /v1/events: body-level errors and arrays -------------------------------------------------------

_LLM_RAW = b'"kind":"llm_call","model":"m","duration_ms":1'


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        pytest.param(b"[]", "$", "empty_batch", id="empty-array"),
        pytest.param(b"[" + b",".join([_dumps(LLM)] * 4) + b"]", "$", "too_many_items", id="too-many-items"),
        pytest.param(b"{" + _LLM_RAW + b"}\n{" + _LLM_RAW + b"}", "$", "malformed_json", id="ndjson-as-json"),
        pytest.param(b"{" + _LLM_RAW + b"} ,", "$", "malformed_json", id="trailing-garbage"),
        pytest.param(b"{" + _LLM_RAW + b",", "$", "malformed_json", id="truncated"),
        pytest.param(b"{" + _LLM_RAW + b',"input_tokens":NaN}', "$.input_tokens", "invalid_number", id="NaN"),
        pytest.param(
            b"[{" + _LLM_RAW + b',"cost_usd":1e999}]', "$[0].cost_usd", "invalid_number", id="1e999-in-array"
        ),
        pytest.param(
            b"{" + _LLM_RAW + b',"model":"n"}', "$.model", "duplicate_key", id="duplicate-top-level"
        ),
        pytest.param(
            b"{" + _LLM_RAW + b',"attributes":{"a":1,"a":2}}',
            "$.attributes.a",
            "duplicate_key",
            id="duplicate-in-attributes",
        ),
        pytest.param(
            b"{" + _LLM_RAW + b',"attributes":{"a":"\\ud800"}}',
            "$.attributes.a",
            "invalid_string",
            id="lone-high-surrogate-in-attribute",
        ),
        pytest.param(
            b"{" + _LLM_RAW + b',"attributes":{"a":"\\udc00"}}',
            "$.attributes.a",
            "invalid_string",
            id="lone-surrogate-in-attribute",
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "$" + "[0]" * 32, "too_deep", id="recursion-bomb"),
        pytest.param(b"\xc3\x28", "$", "invalid_encoding", id="not-utf8"),
    ],
)
def test_batch_refuses_an_unusable_body(body: bytes, field: str, reason: str) -> None:
    """A body that cannot be split into items is refused as a whole, naming where and why."""
    error = _batch_error(body, limits=Limits(max_items=3))
    assert (error.field, error.reason) == (field, reason)


def test_a_non_finite_number_is_refused_at_its_field() -> None:
    """A number beyond float range names the member that holds it, not the whole document."""
    error = _batch_error(b'{"kind":"llm_call","model":"gpt","duration_ms":1e999}')
    assert (error.field, error.reason) == ("$.duration_ms", "invalid_number")


def test_an_integer_literal_too_long_to_convert_is_refused_at_its_field() -> None:
    """An integer of 5,000 digits names the member that holds it."""
    error = _batch_error(b"{" + _LLM_RAW + b',"input_tokens":1' + b"0" * 4999 + b"}")
    assert (error.field, error.reason) == ("$.input_tokens", "invalid_number")


def test_a_lone_surrogate_is_refused_at_its_field() -> None:
    """A string escaping half a surrogate pair names the member that holds it."""
    error = _batch_error(b'{"kind":"llm_call","model":"\\ud800","duration_ms":1}')
    assert (error.field, error.reason) == ("$.model", "invalid_string")


def test_nesting_too_deep_is_refused_at_the_value_32_levels_down() -> None:
    """A recursion bomb inside attributes.x names the value 32 levels down, on the way to it."""
    error = _batch_error(b"{" + _LLM_RAW + b',"attributes":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}")
    assert (error.field, error.reason) == ("$.attributes.x" + "[0]" * 30, "too_deep")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b'{"a":1,"b":}', "$.b", id="missing-value"),
        pytest.param(b'{"a":1,"b":tru}', "$.b", id="bad-literal"),
        pytest.param(b'{"a":1,"b"}', "$.b", id="missing-colon"),
        pytest.param(b'{"a":{"b":[1,,2]}}', "$.a.b[1]", id="missing-array-item"),
        pytest.param(b'{"a":"x\ty"}', "$.a", id="raw-control-character"),
        pytest.param(b'{"a":1 "b":2}', "$", id="missing-comma"),
        pytest.param(b'{"a":1,}', "$", id="trailing-comma"),
    ],
)
def test_malformed_json_is_refused_at_the_member_being_read(body: bytes, field: str) -> None:
    """A syntax error names the member whose value was being read, else the container and the position."""
    error = _batch_error(body)
    assert (error.field, error.reason) == (field, "malformed_json")
    assert "at position" in error.message


def test_ndjson_lines_prefix_the_path_of_a_refused_value() -> None:
    """In NDJSON, each line's refused value is named under the line's index."""
    body = b"\n".join(
        [
            _dumps(LLM),
            b"{" + _LLM_RAW + b',"cost_usd":1e999}',
            b"{" + _LLM_RAW + b',"input_tokens":1' + b"0" * 4999 + b"}",
            b'{"kind":"llm_call","model":"\\udc00","duration_ms":1}',
            b"{" + _LLM_RAW + b',"attributes":{"x":' + b"[" * 100_000 + b"}",
            b'{"kind":"llm_call","model":}',
        ]
    )
    assert _ndjson(body) == [
        (0, "llm_call", None),
        (1, None, ("$[1].cost_usd", "invalid_number")),
        (2, None, ("$[2].input_tokens", "invalid_number")),
        (3, None, ("$[3].model", "invalid_string")),
        (4, None, ("$[4].attributes.x" + "[0]" * 30, "too_deep")),
        (5, None, ("$[5].model", "malformed_json")),
    ]


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        pytest.param(
            b"{" + _LLM_RAW + b',"cost_usd":-Infinity}', "$[2].cost_usd", "invalid_number", id="number"
        ),
        pytest.param(
            b'{"kind":"llm_call","model":"\\ud800"}', "$[2].model", "invalid_string", id="surrogate"
        ),
        pytest.param(
            b'{"attributes":{"x":' + b"[" * 100_000, "$[2].attributes.x" + "[0]" * 29, "too_deep", id="deep"
        ),
        pytest.param(b'{"kind":"llm_call","model":,', "$[2].model", "malformed_json", id="malformed"),
    ],
)
def test_array_items_prefix_the_path_of_a_refused_value(item: bytes, field: str, reason: str) -> None:
    """In a JSON array the body is refused, naming the refused value under its item's index."""
    error = _batch_error(b"[" + _dumps(LLM) + b"," + _dumps(LLM) + b"," + item + b"]")
    assert (error.field, error.reason) == (field, reason)


def test_a_duplicate_key_names_the_key_the_message_names() -> None:
    """The repeated key refused is the first object's to end with one, in field and message alike."""
    error = _batch_error(b"{" + _LLM_RAW + b',"model":"n","attributes":{"x":1,"x":2}}')
    assert (error.field, error.reason, error.message) == (
        "$.attributes.x",
        "duplicate_key",
        "duplicate key 'x'",
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b'{"\\ud800":1,"\\ud800":2}', "duplicate_key", id="duplicate"),
        pytest.param(b'{"\\ud800":1e999}', "invalid_number", id="number"),
        pytest.param(b'{"\\ud800":}', "malformed_json", id="malformed"),
    ],
)
def test_a_key_with_a_lone_surrogate_stays_escaped_in_the_path(body: bytes, reason: str) -> None:
    """A path names such a key as written (the answer is UTF-8, which cannot hold a lone surrogate)."""
    error = _batch_error(body)
    assert (error.field, error.reason) == ("$.\\ud800", reason)


def test_batch_judges_each_array_item_on_its_own() -> None:
    """Non-object items and bad items are rejected with their index; the valid ones are kept."""
    items = [LLM, 1, "x", None, [LLM], {**LLM, "kind": "nope"}, PREDICTION, {}]
    assert _summary(parse_batch(_dumps(items), ndjson=False, now=NOW, limits=LIMITS)) == [
        (0, "llm_call", None),
        (1, None, ("$[1]", "invalid_field")),
        (2, None, ("$[2]", "invalid_field")),
        (3, None, ("$[3]", "invalid_field")),
        (4, None, ("$[4]", "invalid_field")),
        (5, None, ("$[5].kind", "invalid_field")),
        (6, "prediction", None),
        (7, None, ("$[7].kind", "missing_field")),
    ]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": [value]}
    return value


@pytest.mark.parametrize("depth", [5, 50, 400])
def test_deeply_nested_values_are_refused_per_item(depth: int) -> None:
    """Deep nesting inside one item (short of a recursion bomb) rejects that item only, never the batch."""
    items = [{**LLM, "attributes": {"a": _nested(depth)}}, {**LLM, "conversation_id": _nested(depth)}, LLM]
    summary = _summary(parse_batch(_dumps(items), ndjson=False, now=NOW, limits=LIMITS))
    assert [(index, kind) for index, kind, _ in summary] == [(0, None), (1, None), (2, "llm_call")]
    for index, _, error in summary[:2]:
        assert error is not None
        field, reason = error
        assert field is not None
        assert field.startswith(f"$[{index}]")
        assert reason in ("too_deep", "invalid_field")


@pytest.mark.parametrize("depth", [9, 400])
def test_track_refuses_deeply_nested_values(depth: int) -> None:
    """Nested structures where the lab schema wants a scalar are refused, naming the body or the field."""
    error = _track_error(_dumps({**LAB, "business_id": _nested(depth)}))
    too_deep = ("$.business_id" + ".k[0]" * 15 + ".k", "too_deep")  # the value 32 levels down
    assert (error.field, error.reason) in (too_deep, ("$.business_id", "invalid_field"))


def test_batch_item_limit_is_inclusive() -> None:
    """Exactly max_items items are accepted."""
    body = _dumps([LLM, PREDICTION, FEEDBACK])
    assert _summary(parse_batch(body, ndjson=False, now=NOW, limits=Limits(max_items=3))) == [
        (0, "llm_call", None),
        (1, "prediction", None),
        (2, "feedback", None),
    ]


# -- /v1/events: NDJSON ---------------------------------------------------------------------------


def _ndjson(body: bytes, limits: Limits = LIMITS) -> list[Row]:
    return _summary(parse_batch(body, ndjson=True, now=NOW, limits=limits))


def test_ndjson_skips_blank_lines_and_rejects_only_the_malformed_line() -> None:
    """Blank and whitespace-only lines are skipped; a malformed line is one rejected item, not the body."""
    body = (
        b"\n"
        + _dumps(LLM)
        + b"\r\n   \n\t\n"
        + b'{"kind": "llm_call", bad json\n'
        + _dumps(FEEDBACK)
        + b"\n"
        + b"{"
        + _LLM_RAW
        + b',"model":"n"}\n'
        + b"{"
        + _LLM_RAW
        + b',"input_tokens":Infinity}\n'
        + b'{"kind":"llm_call","model":"\\ud800","duration_ms":1}\n'
        + b"[]\n"
        + _dumps(PREDICTION)
    )
    assert _ndjson(body) == [
        (0, "llm_call", None),
        (1, None, ("$[1]", "malformed_json")),
        (2, "feedback", None),
        (3, None, ("$[3].model", "duplicate_key")),
        (4, None, ("$[4].input_tokens", "invalid_number")),
        (5, None, ("$[5].model", "invalid_string")),
        (6, None, ("$[6]", "invalid_field")),
        (7, "prediction", None),
    ]


def test_ndjson_refuses_more_lines_than_max_items() -> None:
    """More non-blank lines than max_items refuse the whole body; blank lines do not count."""
    line = _dumps(LLM)
    assert _ndjson(b"\n\n".join([line] * 3) + b"\n\n", Limits(max_items=3)) == [
        (i, "llm_call", None) for i in range(3)
    ]
    error = _batch_error(b"\n".join([line] * 4), ndjson=True, limits=Limits(max_items=3))
    assert (error.field, error.reason) == ("$", "too_many_items")


@pytest.mark.parametrize(
    "separator",
    [
        pytest.param("\u2028", id="line-separator"),
        pytest.param("\u2029", id="paragraph-separator"),
        pytest.param("\x85", id="next-line"),
    ],
)
def test_ndjson_splits_only_on_newlines(separator: str) -> None:
    """Unicode line separators are legal raw inside JSON strings and do not end an NDJSON line."""
    line = _dumps({**LLM, "attributes": {"text": f"a{separator}b"}})
    assert _ndjson(line + b"\n" + _dumps(FEEDBACK)) == [(0, "llm_call", None), (1, "feedback", None)]


def test_ndjson_line_may_start_with_whitespace() -> None:
    """JSON allows whitespace before a value, so an indented NDJSON line is a valid item."""
    assert _ndjson(b"  " + _dumps(LLM) + b"\n\t" + _dumps(FEEDBACK)) == [
        (0, "llm_call", None),
        (1, "feedback", None),
    ]


def test_single_json_body_may_start_with_whitespace() -> None:
    """A pretty-printed JSON body with a leading newline is accepted."""
    body = b"\n" + json.dumps([LLM, FEEDBACK], indent=2).encode()
    assert _summary(parse_batch(body, ndjson=False, now=NOW, limits=LIMITS)) == [
        (0, "llm_call", None),
        (1, "feedback", None),
    ]


def test_feedback_native_structure() -> None:
    """Feedback parses into the Feedback struct with its optional fields."""
    body = _dumps({**FEEDBACK, "prediction_id": "p-1", "source": "human"})
    [item] = parse_batch(body, ndjson=True, now=NOW, limits=LIMITS)
    assert item == ParsedItem(
        0,
        event=Feedback(model="churn", model_version="v2", correct=True, prediction_id="p-1", source="human"),
    )


# -- the fast route agrees with the reference route -------------------------------------------------

_ROUTE_BODIES = [
    _dumps(LLM),
    _dumps([LLM, PREDICTION, FEEDBACK]),
    json.dumps(LLM, indent=2).encode(),  # whitespace around colons
    _dumps({**LLM, "conversation_id": "caf\u00e9 \u2028 ok"}),  # non-ASCII, raw
    json.dumps({**LLM, "conversation_id": "caf\u00e9"}).encode(),  # \u escapes: reference route
    _dumps({**LLM, "attributes": {"s": "x", "n": 1, "f": 0.5, "b": True}}),
    b"{" + _LLM_RAW + b',"model":"n"}',  # duplicate key, string value
    b"{" + _LLM_RAW + b',"duration_ms":2}',  # duplicate key, number value
    b'{"kind":"llm_call","model":"m","duration_ms":1,"attributes":{"a":"x","a":"y"}}',
    b'{"kind":"llm_call","model":"m","duration_ms":1, "intent" : "a", "intent" : "b"}',
    b'[{"kind":"llm_call","model":"m","duration_ms":1},{"kind":"llm_call","model":"m","duration_ms":1}]',
    _dumps({**LLM, "user_id": "a\x7fb"}),  # DEL, raw
    _dumps({**LLM, "user_id": "a\nb"}),  # escaped control character
    _dumps([LLM, {**LLM, "input_tokens": True}]),  # one bad item: per-item answers
    _dumps({**LLM, "input_tokens": INT64_MAX + 1}),
    b"{" + _LLM_RAW + b',"cost_usd":1e999}',
    b"\xef\xbb\xbf" + _dumps(LLM),  # BOM
    b" \t\r\n" + _dumps(LLM) + b" \n",
    _dumps(["not an event"]),
    _dumps({**LLM, "kind": "nope"}),
    b'"just a string"',
]


def _answers(items: list[ParsedItem]) -> list[tuple[int, Any, Any]]:
    return [
        (item.index, item.event, item.error and (item.error.field, item.error.reason, item.error.message))
        for item in items
    ]


def _both_routes(monkeypatch: pytest.MonkeyPatch, parse: Any) -> tuple[Any, Any]:
    def run() -> Any:
        try:
            return parse()
        except InvalidEvent as exc:
            return (exc.field, exc.reason, exc.message)

    fast = run()
    with monkeypatch.context() as patch:
        patch.setattr(_validation, "_fast_decode", lambda raw: None)
        reference = run()
    return fast, reference


@pytest.mark.parametrize("body", _ROUTE_BODIES)
@pytest.mark.parametrize("ndjson", [False, True])
def test_fast_route_gives_the_reference_answer(
    monkeypatch: pytest.MonkeyPatch, body: bytes, ndjson: bool
) -> None:
    """Every body gets the same events and the same errors whichever route parses it."""
    fast, reference = _both_routes(
        monkeypatch, lambda: _answers(parse_batch(body, ndjson=ndjson, now=NOW, limits=LIMITS))
    )
    assert fast == reference


@pytest.mark.parametrize(
    "body",
    [
        _dumps(LAB),
        b'{"business_id":"a","response_time_ms":1,"tokens_used":1,"tokens_used":2}',
        _dumps({**LAB, "business_id": "a\x7f"}),
        json.dumps({**LAB, "intent_detected": "caf\u00e9"}).encode(),
        _dumps({**LAB, "tokens_used": -1}),
    ],
)
def test_fast_route_gives_the_reference_answer_for_track(
    monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    """/track too: the same event or the same error whichever route parses the body."""
    fast, reference = _both_routes(monkeypatch, lambda: parse_track(body, NOW, LIMITS))
    assert fast == reference


def test_fast_route_takes_compact_valid_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common body (compact, valid, no escapes) is decoded by the fast route, not the reference."""
    monkeypatch.setattr(_validation, "_decode", None)  # the reference decoder would fail if called
    [item] = parse_batch(_dumps({**LLM, "attributes": {"k": "v"}}), ndjson=False, now=NOW, limits=LIMITS)
    assert item.event is not None
    items = parse_batch(_dumps(LLM) + b"\n" + _dumps(FEEDBACK), ndjson=True, now=NOW, limits=LIMITS)
    assert [type(item.event) for item in items] == [LlmCall, Feedback]
    assert isinstance(parse_track(_dumps(LAB), NOW, LIMITS), LlmCall)
