"""The field tables: where each event field goes on the span and in the log line (export.recorder.mapping)."""

from __future__ import annotations

import msgspec
import pytest

from otel_service.export.recorder.mapping import DERIVED, FEEDBACK, LLM_CALL, PREDICTION, Field, FieldMap
from otel_service.model.events import Feedback, LlmCall, Prediction

TABLES = [(LLM_CALL, LlmCall), (PREDICTION, Prediction), (FEEDBACK, Feedback)]


@pytest.mark.parametrize(("table", "kind"), TABLES, ids=["llm_call", "prediction", "feedback"])
def test_every_row_names_a_field_of_its_kind_or_a_derived_value(
    table: tuple[Field, ...], kind: type[msgspec.Struct]
) -> None:
    """A row reads an event field that exists, or a value the recorder derives; keys are not reused."""
    assert [f.value for f in table if f.value not in DERIVED and f.value not in kind.__struct_fields__] == []
    spans = [f.span for f in table if f.span is not None]
    logs = [f.log for f in table if f.log is not None]
    assert len(spans) == len(set(spans))
    assert len(logs) == len(set(logs))
    assert not {"event", "level", "timestamp", "trace_id", "span_id", "correlation_id"} & set(logs)


def test_an_events_own_fields_leave_out_none_and_false_flags() -> None:
    """Own values: span attributes and log fields in table order, without None or empty if_true values."""
    fields = FieldMap(PREDICTION)
    event = Prediction(model="m", model_version="1", duration_ms=5.0, confidence=0.5)
    span, log = fields.own(event, ())
    assert span == {"ml.prediction.confidence": 0.5, "ml.prediction.id": None}
    assert log == [("duration_ms", 5.0), ("confidence", 0.5)]


def test_derived_values_take_their_place_in_the_table() -> None:
    """An LLM call's token total and cost go where the table puts them, between the event's own fields."""
    fields = FieldMap(LLM_CALL)
    assert fields.derived == ("total_tokens", "cost")
    event = LlmCall(model="m", duration_ms=1.0, input_tokens=3, output_tokens=4, session_id="s")
    span, log = fields.own(event, (7, 0.25))
    assert span["app.total_tokens"] == 7
    assert span["app.cost_usd"] == 0.25
    assert [key for key, _ in log] == [
        "duration_ms", "input_tokens", "output_tokens", "total_tokens", "cost_usd", "session_id",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "event", "derived"),
    [
        (
            LLM_CALL,
            LlmCall(model="m", duration_ms=2.0, output_tokens=0, user_id="u", response_length=9),
            (0, None),
        ),
        (LLM_CALL, LlmCall(model="m", duration_ms=0.0, input_tokens=1, conversation_id="c"), (1, 0.5)),
        (PREDICTION, Prediction(model="m", model_version="1", duration_ms=1.0, features={"x": 1.0}), ()),
        (PREDICTION, Prediction(model="m", model_version="1", duration_ms=1.0, prediction_id="p"), ()),
        (FEEDBACK, Feedback(model="m", model_version="1", correct=False), ()),
    ],
)
def test_the_compiled_fields_equal_the_table_read_row_by_row(
    table: tuple[Field, ...], event: msgspec.Struct, derived: tuple[object, ...]
) -> None:
    """``own`` (compiled once from the table) gives what reading the table row by row gives."""
    fields = FieldMap(table)
    assert fields.own(event, derived) == fields.own_reference(event, derived)
