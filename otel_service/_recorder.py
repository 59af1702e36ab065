"""Turns envelopes into telemetry: metric measurements, one span, one log record and one stdout line.

Counters are summed per batch and added once per attribute set; histograms (in-process
``FastHistogram`` s) are recorded per event, with the event's span as exemplar on the durations.
Recording metrics and emitting the span and log are separate steps, so a replay after a restart can
do either alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.metrics import Counter

from . import _otlp
from ._drift import DriftTracker
from ._events import Event, Feedback, LlmCall, Prediction
from ._instruments import WorkerInstruments
from ._labels import LabelGuard, infer_provider
from ._logging import EventLogger
from ._pricing import Cost, PriceTable
from ._records import Envelope

__all__ = ["Recorded", "Recorder"]

Attrs = dict[str, Any]
_GUARDED = (
    "business_id",
    "model",
    "provider",
    "intent",
    "response_type",
    "error_type",
    "model_version",
    "prediction_result",
)


@dataclass(slots=True)
class Recorded:
    """The OTLP items (serialized Span and LogRecord bodies) a batch produced, in envelope order."""

    spans: list[bytes] = field(default_factory=list)
    logs: list[bytes] = field(default_factory=list)


class _Sums:
    """Counter increments of one batch, summed per (instrument, attribute set)."""

    __slots__ = ("_sums",)

    def __init__(self) -> None:
        self._sums: dict[tuple[int, tuple[tuple[str, Any], ...]], list[Any]] = {}

    def add(self, counter: Counter, attrs: Attrs, value: float) -> None:
        key = (id(counter), tuple(attrs.items()))
        entry = self._sums.get(key)
        if entry is None:
            self._sums[key] = [counter, attrs, value]
        else:
            entry[2] += value

    def flush(self) -> None:
        for counter, attrs, value in self._sums.values():
            counter.add(value, attrs)
        self._sums.clear()


@dataclass(frozen=True, slots=True)
class _Call:
    """What an LLM call implies beyond its fields: provider, error class, token total, cost."""

    provider: str
    error: str | None
    total_tokens: int | None
    cost: Cost


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def _error(event: LlmCall | Prediction) -> str | None:
    return None if event.success else (event.error_type or "_OTHER")


class Recorder:
    """Records each envelope's metrics and log line, and builds its span and OTLP log record."""

    def __init__(
        self,
        instruments: WorkerInstruments,
        *,
        prices: PriceTable,
        logger: EventLogger,
        service_name: str,
        default_provider: str = "_OTHER",
        max_tenants: int = 200,
        max_label_values: int = 200,
        drift: DriftTracker | None = None,
    ) -> None:
        self._m = instruments
        self._prices = prices
        self._logger = logger
        self._service = service_name
        self._default_provider = default_provider
        self.drift = drift if drift is not None else DriftTracker()
        self._guards = {
            name: LabelGuard(name, max_tenants if name == "business_id" else max_label_values)
            for name in _GUARDED
        }
        self._g: dict[str, Callable[[str], str]] = dict(self._guards.items())

    def record(self, envelopes: Sequence[Envelope], *, replay: int = 0, counted: int = 0) -> Recorded:
        """Record the metrics of all but the first ``counted`` envelopes, and emit (log line, span,
        OTLP log record) all but the first ``replay`` — the prefixes a restart had already done."""
        out = Recorded()
        sums = _Sums()
        for index, env in enumerate(envelopes):
            event = env.event
            call = self._call(event) if isinstance(event, LlmCall) else None
            if index >= counted:
                if isinstance(event, LlmCall):
                    assert call is not None
                    self._llm_metrics(env, event, call, sums)
                elif isinstance(event, Prediction):
                    self._prediction_metrics(env, event, sums)
                else:
                    self._feedback_metrics(event, sums)
            if index >= replay:
                if isinstance(event, LlmCall):
                    assert call is not None
                    self._llm_emit(env, event, call, out)
                elif isinstance(event, Prediction):
                    self._prediction_emit(env, event, out)
                else:
                    self._feedback_emit(env, event, out)
        for guard in self._guards.values():
            overflow = guard.take_overflow()
            if overflow:
                sums.add(self._m.label_overflow, {"attribute": guard.name}, overflow)
        sums.flush()
        self._logger.flush()
        return out

    def _call(self, e: LlmCall) -> _Call:
        total = e.total_tokens
        if total is None and (e.input_tokens is not None or e.output_tokens is not None):
            total = (e.input_tokens or 0) + (e.output_tokens or 0)
        cost = self._prices.cost(
            e.model,
            reported=e.cost_usd,
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cached_input_tokens=e.cached_input_tokens,
            reasoning_tokens=e.reasoning_tokens,
        )
        provider = e.provider or infer_provider(e.model, self._default_provider)
        return _Call(provider, _error(e), total, cost)

    # -- metrics -------------------------------------------------------------------------------

    def _llm_metrics(self, env: Envelope, e: LlmCall, call: _Call, sums: _Sums) -> None:
        m, g = self._m, self._g
        model = g["model"](e.model)
        business = g["business_id"](e.business_id or "unknown")
        seconds = e.duration_ms / 1000.0
        base = {
            "gen_ai.operation.name": e.operation,
            "gen_ai.provider.name": g["provider"](call.provider),
            "gen_ai.request.model": model,
        }
        duration_attrs = base if call.error is None else {**base, "error.type": g["error_type"](call.error)}
        m.operation_duration.record(seconds, duration_attrs, env.trace_id, env.span_id)
        if e.input_tokens is not None:
            m.token_usage.record(e.input_tokens, {**base, "gen_ai.token.type": "input"})
        if e.output_tokens is not None:
            m.token_usage.record(e.output_tokens, {**base, "gen_ai.token.type": "output"})

        tenant = {"business_id": business}
        intent = g["intent"](e.intent or "unknown")
        response_type = g["response_type"](e.response_type or "unknown")
        sums.add(
            m.lab_requests,
            {"business_id": business, "intent": intent, "response_type": response_type},
            1,
        )
        m.lab_response_time.record(seconds, tenant, env.trace_id, env.span_id)
        if call.total_tokens:
            sums.add(m.lab_tokens, {"business_id": business, "model": model}, call.total_tokens)
        cost = call.cost
        if cost.source == "unpriced":
            sums.add(m.unpriced, {"gen_ai.request.model": model}, 1)
        else:
            for token_type, usd in cost.by_type:
                sums.add(
                    m.cost,
                    {
                        **base,
                        "gen_ai.token.type": token_type,
                        "cost.source": cost.source,
                        "business_id": business,
                    },
                    usd,
                )
            sums.add(m.lab_cost, tenant, cost.total)
        if e.appointment_requested:
            sums.add(m.lab_appointments, tenant, 1)
            sums.add(m.outcomes, {**tenant, "outcome": "appointment_requested"}, 1)
        if e.appointment_booked:
            sums.add(m.outcomes, {**tenant, "outcome": "appointment_booked"}, 1)
        if e.human_handoff:
            sums.add(m.lab_handoffs, tenant, 1)
            sums.add(m.outcomes, {**tenant, "outcome": "human_handoff"}, 1)
        if e.user_message_length is not None:
            m.message_length.record(e.user_message_length, {"role": "user", "gen_ai.request.model": model})
        if e.response_length is not None:
            m.message_length.record(e.response_length, {"role": "assistant", "gen_ai.request.model": model})
        sums.add(m.processed, {"kind": "llm_call"}, 1)

    def _prediction_metrics(self, env: Envelope, e: Prediction, sums: _Sums) -> None:
        m, g = self._m, self._g
        error = _error(e)
        model = g["model"](e.model)
        ids = {"model_name": model, "model_version": g["model_version"](e.model_version)}
        sums.add(
            m.predictions,
            {
                **ids,
                "prediction_result": g["prediction_result"](e.result or "none"),
                "status": "success" if error is None else "error",
            },
            1,
        )
        m.prediction_duration.record(e.duration_ms / 1000.0, ids, env.trace_id, env.span_id)
        if e.confidence is not None:
            m.prediction_confidence.record(e.confidence, ids)
        if e.features:
            self.drift.observe(model, e.features)
        sums.add(m.processed, {"kind": "prediction"}, 1)

    def _feedback_metrics(self, e: Feedback, sums: _Sums) -> None:
        m, g = self._m, self._g
        sums.add(
            m.feedback,
            {
                "model_name": g["model"](e.model),
                "model_version": g["model_version"](e.model_version),
                "correct": "true" if e.correct else "false",
            },
            1,
        )
        sums.add(m.processed, {"kind": "feedback"}, 1)

    # -- spans and logs ------------------------------------------------------------------------

    def _llm_emit(self, env: Envelope, e: LlmCall, call: _Call, out: Recorded) -> None:
        cost_usd = call.cost.total if call.cost.source != "unpriced" else None
        fields: Attrs = {
            "operation": e.operation,
            "model": e.model,
            "provider": call.provider,
            "response_model": e.response_model,
            "duration_ms": e.duration_ms,
            "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens,
            "cached_input_tokens": e.cached_input_tokens,
            "reasoning_tokens": e.reasoning_tokens,
            "total_tokens": call.total_tokens,
            "cost_usd": cost_usd,
            "cost_source": call.cost.source,
            "success": e.success,
            "error_type": call.error,
            "business_id": e.business_id,
            "conversation_id": e.conversation_id,
            "session_id": e.session_id,
            "user_id": e.user_id,
            "intent": e.intent,
            "response_type": e.response_type,
            "appointment_requested": e.appointment_requested or None,
            "appointment_booked": e.appointment_booked or None,
            "human_handoff": e.human_handoff or None,
            "user_message_length": e.user_message_length,
            "response_length": e.response_length,
        }
        span_attrs: Attrs = {
            "gen_ai.operation.name": e.operation,
            "gen_ai.provider.name": call.provider,
            "gen_ai.request.model": e.model,
            "gen_ai.response.model": e.response_model,
            "gen_ai.usage.input_tokens": e.input_tokens,
            "gen_ai.usage.output_tokens": e.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": e.cached_input_tokens,
            "gen_ai.usage.reasoning.output_tokens": e.reasoning_tokens,
            "gen_ai.conversation.id": e.conversation_id,
            "session.id": e.session_id,
            "user.id": e.user_id,
            "error.type": call.error,
            "app.business_id": e.business_id,
            "app.intent": e.intent,
            "app.response_type": e.response_type,
            "app.total_tokens": call.total_tokens,
            "app.cost_usd": cost_usd,
            "app.cost_source": call.cost.source,
            "app.appointment_requested": e.appointment_requested,
            "app.appointment_booked": e.appointment_booked,
            "app.human_handoff": e.human_handoff,
        }
        name = f"{e.operation} {e.model}"
        self._emit(env, name, _otlp.KIND_CLIENT, e.duration_ms, call.error, span_attrs, fields, out)

    def _prediction_emit(self, env: Envelope, e: Prediction, out: Recorded) -> None:
        error = _error(e)
        fields: Attrs = {
            "model": e.model,
            "model_version": e.model_version,
            "duration_ms": e.duration_ms,
            "result": e.result,
            "confidence": e.confidence,
            "success": e.success,
            "error_type": error,
            "prediction_id": e.prediction_id,
            "business_id": e.business_id,
            "features": e.features or None,
        }
        span_attrs: Attrs = {
            "ml.model.name": e.model,
            "ml.model.version": e.model_version,
            "ml.prediction.result": e.result,
            "ml.prediction.confidence": e.confidence,
            "ml.prediction.id": e.prediction_id,
            "error.type": error,
            "app.business_id": e.business_id,
        }
        name = f"predict {e.model}"
        self._emit(env, name, _otlp.KIND_INTERNAL, e.duration_ms, error, span_attrs, fields, out)

    def _feedback_emit(self, env: Envelope, e: Feedback, out: Recorded) -> None:
        fields: Attrs = {
            "model": e.model,
            "model_version": e.model_version,
            "correct": e.correct,
            "prediction_id": e.prediction_id,
            "source": e.source,
            "business_id": e.business_id,
        }
        span_attrs: Attrs = {
            "ml.model.name": e.model,
            "ml.model.version": e.model_version,
            "ml.feedback.correct": e.correct,
            "ml.prediction.id": e.prediction_id,
            "ml.feedback.source": e.source,
            "app.business_id": e.business_id,
        }
        name = f"feedback {e.model}"
        self._emit(env, name, _otlp.KIND_INTERNAL, 0.0, None, span_attrs, fields, out)

    def _emit(
        self,
        env: Envelope,
        name: str,
        kind: int,
        duration_ms: float,
        error: str | None,
        span_attrs: Attrs,
        fields: Attrs,
        out: Recorded,
    ) -> None:
        event: Event = env.event
        kind_name = str(type(event).__struct_config__.tag)
        span_attrs["correlation_id"] = env.correlation_id
        for key, value in event.attributes.items():
            span_attrs[f"app.{key}"] = value
        out.spans.append(
            _otlp.span(
                trace_id=env.trace_id,
                span_id=env.span_id,
                parent_span_id=env.parent_span_id,
                name=name,
                kind=kind,
                start_ns=env.end_ns - int(duration_ms * 1e6),
                end_ns=env.end_ns,
                attributes=span_attrs,
                error=error,
            )
        )
        record: Attrs = {
            "timestamp": _iso(env.end_ns),
            "service": self._service,
            "kind": kind_name,
            "trace_id": env.trace_id,
            "span_id": env.span_id,
            "correlation_id": env.correlation_id,
        }
        record.update((k, v) for k, v in fields.items() if v is not None)
        if event.attributes:
            record["attributes"] = event.attributes
        line = self._logger.log("error" if error else "info", kind_name, record)
        log_attrs: Attrs = {"correlation_id": env.correlation_id, "kind": kind_name}
        if event.business_id is not None:
            log_attrs["business_id"] = event.business_id
        out.logs.append(
            _otlp.log_record(
                trace_id=env.trace_id,
                span_id=env.span_id,
                time_ns=env.end_ns,
                observed_ns=env.received_ns,
                severity=_otlp.SEVERITY_ERROR if error else _otlp.SEVERITY_INFO,
                body=line,
                event_name=f"otel_service.{kind_name}",
                attributes=log_attrs,
            )
        )
