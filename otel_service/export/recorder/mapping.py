"""Where each event field goes on the span and in the log line: one table per event kind.

A row names a value (an event field, or one the recorder derives, listed in ``DERIVED``), its span
attribute and its log-line key (``None``: not there), and whether it is the same for every event of a
plan (``constant``: a low-cardinality field, part of the plan's key, encoded once per plan) or the
event's own (looked up per event). ``None`` values are left out of both; ``if_true`` rows are logged
only when true (outcome flags). Metric attributes are not here: they are guarded against cardinality
and built in ``plans``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DERIVED", "FEEDBACK", "LLM_CALL", "PREDICTION", "Field", "FieldMap", "Own", "OwnFields"]


@dataclass(frozen=True, slots=True)
class Field:
    """One row: ``value`` goes to span attribute ``span`` and log key ``log``."""

    value: str
    span: str | None
    log: str | None
    constant: bool = False
    if_true: bool = False


def _c(value: str, span: str | None, log: str | None, *, if_true: bool = False) -> Field:
    return Field(value, span, log, constant=True, if_true=if_true)


LLM_CALL = (
    _c("operation", "gen_ai.operation.name", "operation"),
    _c("model", "gen_ai.request.model", "model"),
    _c("provider", "gen_ai.provider.name", "provider"),
    _c("response_model", "gen_ai.response.model", "response_model"),
    _c("success", None, "success"),
    _c("error", "error.type", "error_type"),
    _c("business_id", "app.business_id", "business_id"),
    _c("intent", "app.intent", "intent"),
    _c("response_type", "app.response_type", "response_type"),
    _c("cost_source", "app.cost_source", "cost_source"),
    _c("appointment_requested", "app.appointment_requested", "appointment_requested", if_true=True),
    _c("appointment_booked", "app.appointment_booked", "appointment_booked", if_true=True),
    _c("human_handoff", "app.human_handoff", "human_handoff", if_true=True),
    Field("duration_ms", None, "duration_ms"),
    Field("input_tokens", "gen_ai.usage.input_tokens", "input_tokens"),
    Field("output_tokens", "gen_ai.usage.output_tokens", "output_tokens"),
    Field("cached_input_tokens", "gen_ai.usage.cache_read.input_tokens", "cached_input_tokens"),
    Field("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
    Field("total_tokens", "app.total_tokens", "total_tokens"),
    Field("cost", "app.cost_usd", "cost_usd"),
    Field("conversation_id", "gen_ai.conversation.id", "conversation_id"),
    Field("session_id", "session.id", "session_id"),
    Field("user_id", "user.id", "user_id"),
    Field("user_message_length", None, "user_message_length"),
    Field("response_length", None, "response_length"),
    Field("success_rate", "app.success_rate", "success_rate"),
    Field("user_satisfaction", "app.user_satisfaction", "user_satisfaction"),
)

PREDICTION = (
    _c("model", "ml.model.name", "model"),
    _c("model_version", "ml.model.version", "model_version"),
    _c("result", "ml.prediction.result", "result"),
    _c("success", None, "success"),
    _c("error", "error.type", "error_type"),
    _c("business_id", "app.business_id", "business_id"),
    Field("duration_ms", None, "duration_ms"),
    Field("confidence", "ml.prediction.confidence", "confidence"),
    Field("prediction_id", "ml.prediction.id", "prediction_id"),
    Field("features", None, "features", if_true=True),
)

FEEDBACK = (
    _c("model", "ml.model.name", "model"),
    _c("model_version", "ml.model.version", "model_version"),
    _c("correct", "ml.feedback.correct", "correct"),
    _c("source", "ml.feedback.source", "source"),
    _c("business_id", "app.business_id", "business_id"),
)

#: Values the recorder works out rather than reads from the event: the provider (sent or inferred),
#: the error class of a failure, where the cost came from, the token total and the cost.
DERIVED = frozenset({"provider", "error", "cost_source", "total_tokens", "cost"})


#: An event's own span attributes and log fields.
OwnFields = tuple[dict[str, Any], list[tuple[str, Any]]]
Own = Callable[[Any, tuple[Any, ...]], OwnFields]


def _compile(own: list[Field], derived: tuple[str, ...]) -> Own:
    """``own(event, derived)`` for these rows, as Python source compiled once: a dict literal of span
    attributes and a ``None`` check per log field, as fast as writing them out by hand (a loop over
    the table costs ~1.5 µs more per event). ``FieldMap.own_reference`` is the same, interpreted; the
    tests hold one to the other."""

    def value(f: Field) -> str:
        return f"_d[{derived.index(f.value)}]" if f.value in derived else f"event.{f.value}"

    lines = ["def own(event, _d):"]
    span = ", ".join(f"{f.span!r}: {value(f)}" for f in own if f.span is not None)
    lines.append(f"    span = {{{span}}}")
    lines.append("    log = []")
    for f in own:
        if f.log is not None:
            test = "v" if f.if_true else "v is not None"
            lines.append(f"    v = {value(f)}")
            lines.append(f"    if {test}: log.append(({f.log!r}, v))")
    lines.append("    return span, log")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # noqa: S102 -- source built from the constant tables above
    return namespace["own"]  # type: ignore[no-any-return]


class FieldMap:
    """One kind's table, compiled: the constant part from a plan's values, the own part per event."""

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.constant = tuple(f for f in fields if f.constant)
        own = [f for f in fields if not f.constant]
        #: The event's own derived values, in the order ``span``/``log`` take them.
        self.derived = tuple(f.value for f in own if f.value in DERIVED)
        self._own = own
        #: ``own(event, derived)``: the event's own span attributes and log fields.
        self.own: Own = _compile(own, self.derived)

    def constant_span(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A plan's span attributes, from its values (field or derived name -> value)."""
        return {f.span: values[f.value] for f in self.constant if f.span is not None}

    def constant_log(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A plan's log-line fields (``None`` and false ``if_true`` values left out)."""
        out = {}
        for f in self.constant:
            value = values[f.value]
            if f.log is not None and value is not None and (value or not f.if_true):
                out[f.log] = value
        return out

    def own_reference(self, event: Any, derived: tuple[Any, ...]) -> OwnFields:
        """What ``own`` computes, read from the table row by row (the reference for tests)."""
        values = {name: derived[index] for index, name in enumerate(self.derived)}
        span: dict[str, Any] = {}
        log: list[tuple[str, Any]] = []
        for f in self._own:
            value = values[f.value] if f.value in values else getattr(event, f.value)
            if f.span is not None:
                span[f.span] = value
            if f.log is not None and value is not None and (value or not f.if_true):
                log.append((f.log, value))
        return span, log
