"""Turns envelopes into telemetry: metric measurements, one span, one log record and one stdout line.

Most of an event's telemetry depends only on its low-cardinality fields (kind, model, operation,
provider, tenant, intent, outcome flags, success): metric attribute sets, the span's name and constant
attributes, the log record's severity and constant attributes. A plan (``_LlmPlan``,
``_PredictionPlan``, ``_FeedbackPlan``) holds that part, built and encoded once per distinct
combination and cached (bounded), so each event only adds what is its own: values, IDs and times.
Plans whose labels hit a cardinality cap are not cached, so every such event is counted as an
overflow.

Counters are summed per batch and added once per attribute set; histograms (in-process
``FastHistogram`` s) are recorded per event, with the event's span as exemplar on the durations.
Recording metrics and emitting the span and log are separate steps, so a replay after a restart can
do either alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry.metrics import Counter

from ..model.events import KIND_OF, Event, Feedback, LlmCall, Prediction
from ..model.pricing import ModelPrice, PriceTable, cost_of
from ..spool.record import Envelope
from ..telemetry.cardinality import LabelGuard, infer_provider
from ..telemetry.drift import DriftTracker
from ..telemetry.instruments import WorkerInstruments
from ..telemetry.logs import EventLogger
from . import otlp

__all__ = ["Recorded", "Recorder"]

Attrs = dict[str, Any]
#: A histogram's attribute set as the items tuple ``FastHistogram.record_key`` takes.
Key = tuple[tuple[str, Any], ...]
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
#: Distinct plans kept per event kind; the cache starts over when full.
_MAX_PLANS = 4096
_P = TypeVar("_P")


@dataclass(slots=True)
class Recorded:
    """The OTLP items (serialized Span and LogRecord bodies) a batch produced, in envelope order."""

    spans: list[bytes] = field(default_factory=list)
    logs: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Sum:
    """One counter and attribute set, with its key in ``_Sums``."""

    key: tuple[int, Key]
    counter: Counter
    attrs: Attrs


def _sum(counter: Counter, attrs: Attrs) -> _Sum:
    return _Sum((id(counter), tuple(attrs.items())), counter, attrs)


class _Sums:
    """Counter increments of one batch, summed per (instrument, attribute set)."""

    __slots__ = ("_events", "_sums")

    def __init__(self) -> None:
        self._sums: dict[tuple[int, Key], list[Any]] = {}
        #: Events per plan's ``per_event`` entries (by identity), each counted on every entry at flush.
        self._events: dict[int, list[Any]] = {}

    def add_event(self, entries: tuple[_Sum, ...]) -> None:
        """Count one event on each of ``entries`` (one dict update however many entries)."""
        slot = self._events.get(id(entries))
        if slot is None:
            self._events[id(entries)] = [entries, 1]
        else:
            slot[1] += 1

    def add(self, entry: _Sum, value: float) -> None:
        slot = self._sums.get(entry.key)
        if slot is None:
            self._sums[entry.key] = [entry, value]
        else:
            slot[1] += value

    def flush(self) -> None:
        for entries, events in self._events.values():
            for entry in entries:
                self.add(entry, events)
        self._events.clear()
        for entry, value in self._sums.values():
            entry.counter.add(value, entry.attrs)
        self._sums.clear()


@dataclass(frozen=True, slots=True)
class _Emit:
    """The constant part of the span and log record of every event sharing a plan."""

    kind: str
    level: str
    span_head: bytes
    span_attributes: bytes
    span_status: bytes
    log_head: bytes
    #: Log line fields (``None`` already left out).
    log_fields: Attrs


@dataclass(slots=True)
class _LlmPlan:
    emit: _Emit
    price: ModelPrice | None
    cost_source: str
    base: Attrs
    business: str
    duration: Key
    tokens_in: Key
    tokens_out: Key
    tenant: Key
    message_user: Key
    message_assistant: Key
    per_event: tuple[_Sum, ...]
    tokens: _Sum
    lab_cost: _Sum
    unpriced: _Sum
    cost_by_type: dict[str, _Sum] = field(default_factory=dict)


@dataclass(slots=True)
class _PredictionPlan:
    emit: _Emit
    model: str
    ids: Key
    per_event: tuple[_Sum, ...]


@dataclass(slots=True)
class _FeedbackPlan:
    emit: _Emit
    per_event: tuple[_Sum, ...]


def _error(event: LlmCall | Prediction) -> str | None:
    return None if event.success else (event.error_type or "_OTHER")


def _key(attrs: Attrs) -> Key:
    return tuple(attrs.items())


def _compact(fields: Attrs) -> Attrs:
    return {k: v for k, v in fields.items() if v is not None}


class _Timestamps:
    """RFC 3339 UTC text of nanosecond times, formatting the date and time once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{rest // 1000:06d}+00:00"


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
        self._overflowed = False
        self._llm_plans: dict[tuple[Any, ...], _LlmPlan] = {}
        self._prediction_plans: dict[tuple[Any, ...], _PredictionPlan] = {}
        self._feedback_plans: dict[tuple[Any, ...], _FeedbackPlan] = {}
        self._timestamp = _Timestamps()

    def record(self, envelopes: Sequence[Envelope], *, replay: int = 0, counted: int = 0) -> Recorded:
        """Record the metrics of all but the first ``counted`` envelopes, and emit (log line, span,
        OTLP log record) all but the first ``replay`` — the prefixes a restart had already done."""
        out = Recorded()
        sums = _Sums()
        for index, env in enumerate(envelopes):
            event = env.event
            if isinstance(event, LlmCall):
                self._llm(env, event, sums if index >= counted else None, out if index >= replay else None)
            elif isinstance(event, Prediction):
                plan = self._prediction_plan(event)
                if index >= counted:
                    self._prediction_metrics(env, event, plan, sums)
                if index >= replay:
                    self._prediction_emit(env, event, plan, out)
            else:  # feedback: counters, and a span and log without values of their own
                feedback = self._feedback_plan(event)
                if index >= counted:
                    sums.add_event(feedback.per_event)
                if index >= replay:
                    self._emit(env, feedback.emit, 0.0, {}, (), out)
        for guard in self._guards.values():
            overflow = guard.take_overflow()
            if overflow:
                sums.add(_sum(self._m.label_overflow, {"attribute": guard.name}), overflow)
        sums.flush()
        self._logger.flush()
        return out

    # -- plans ---------------------------------------------------------------------------------

    def _label(self, name: str, value: str) -> str:
        guard = self._guards[name]
        before = guard.overflowed
        guarded = guard(value)
        if guard.overflowed != before:
            self._overflowed = True
        return guarded

    def _cache(self, plans: dict[tuple[Any, ...], _P], key: tuple[Any, ...], plan: _P) -> _P:
        """Keep ``plan`` unless building it replaced a label with ``_OTHER`` (then every event must
        go through the guard, to be counted)."""
        if not self._overflowed:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = plan
        self._overflowed = False
        return plan

    def _llm_plan(self, e: LlmCall) -> _LlmPlan:
        key = (
            e.operation,
            e.model,
            e.provider,
            e.response_model,
            e.success,
            e.error_type,
            e.business_id,
            e.intent,
            e.response_type,
            e.appointment_requested,
            e.appointment_booked,
            e.human_handoff,
            e.cost_usd is not None,
            e.input_tokens is None and e.output_tokens is None,
        )
        plan = self._llm_plans.get(key)
        if plan is None:
            plan = self._cache(self._llm_plans, key, self._new_llm_plan(e))
        return plan

    def _new_llm_plan(self, e: LlmCall) -> _LlmPlan:
        m, label = self._m, self._label
        provider = e.provider or infer_provider(e.model, self._default_provider)
        error = _error(e)
        price = self._prices.price(e.model)
        if e.cost_usd is not None:
            source = "reported"
        elif price is None or (e.input_tokens is None and e.output_tokens is None):
            source = "unpriced"
        else:
            source = "computed"
        model = label("model", e.model)
        business = label("business_id", e.business_id or "unknown")
        base = {
            "gen_ai.operation.name": e.operation,
            "gen_ai.provider.name": label("provider", provider),
            "gen_ai.request.model": model,
        }
        duration = base if error is None else {**base, "error.type": label("error_type", error)}
        tenant = {"business_id": business}
        per_event = [
            _sum(
                m.lab_requests,
                {
                    "business_id": business,
                    "intent": label("intent", e.intent or "unknown"),
                    "response_type": label("response_type", e.response_type or "unknown"),
                },
            ),
            _sum(m.processed, {"kind": "llm_call"}),
        ]
        if e.appointment_requested:
            per_event.append(_sum(m.lab_appointments, tenant))
            per_event.append(_sum(m.outcomes, {**tenant, "outcome": "appointment_requested"}))
        if e.appointment_booked:
            per_event.append(_sum(m.outcomes, {**tenant, "outcome": "appointment_booked"}))
        if e.human_handoff:
            per_event.append(_sum(m.lab_handoffs, tenant))
            per_event.append(_sum(m.outcomes, {**tenant, "outcome": "human_handoff"}))
        span_attributes = {
            "gen_ai.operation.name": e.operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": e.model,
            "gen_ai.response.model": e.response_model,
            "error.type": error,
            "app.business_id": e.business_id,
            "app.intent": e.intent,
            "app.response_type": e.response_type,
            "app.cost_source": source,
            "app.appointment_requested": e.appointment_requested,
            "app.appointment_booked": e.appointment_booked,
            "app.human_handoff": e.human_handoff,
        }
        log_fields = {
            "operation": e.operation,
            "model": e.model,
            "provider": provider,
            "response_model": e.response_model,
            "success": e.success,
            "error_type": error,
            "business_id": e.business_id,
            "intent": e.intent,
            "response_type": e.response_type,
            "cost_source": source,
            "appointment_requested": e.appointment_requested or None,
            "appointment_booked": e.appointment_booked or None,
            "human_handoff": e.human_handoff or None,
        }
        name = f"{e.operation} {e.model}"
        return _LlmPlan(
            emit=self._new_emit(e, name, otlp.KIND_CLIENT, error, span_attributes, log_fields),
            price=price,
            cost_source=source,
            base=base,
            business=business,
            duration=_key(duration),
            tokens_in=_key({**base, "gen_ai.token.type": "input"}),
            tokens_out=_key({**base, "gen_ai.token.type": "output"}),
            tenant=_key(tenant),
            message_user=_key({"role": "user", "gen_ai.request.model": model}),
            message_assistant=_key({"role": "assistant", "gen_ai.request.model": model}),
            per_event=tuple(per_event),
            tokens=_sum(m.lab_tokens, {"business_id": business, "model": model}),
            lab_cost=_sum(m.lab_cost, tenant),
            unpriced=_sum(m.unpriced, {"gen_ai.request.model": model}),
        )

    def _prediction_plan(self, e: Prediction) -> _PredictionPlan:
        key = (e.model, e.model_version, e.result, e.success, e.error_type, e.business_id)
        plan = self._prediction_plans.get(key)
        if plan is None:
            m, label = self._m, self._label
            error = _error(e)
            model = label("model", e.model)
            ids = {"model_name": model, "model_version": label("model_version", e.model_version)}
            result = {
                **ids,
                "prediction_result": label("prediction_result", e.result or "none"),
                "status": "success" if error is None else "error",
            }
            span_attributes = {
                "ml.model.name": e.model,
                "ml.model.version": e.model_version,
                "ml.prediction.result": e.result,
                "error.type": error,
                "app.business_id": e.business_id,
            }
            log_fields = {
                "model": e.model,
                "model_version": e.model_version,
                "result": e.result,
                "success": e.success,
                "error_type": error,
                "business_id": e.business_id,
            }
            emit = self._new_emit(
                e, f"predict {e.model}", otlp.KIND_INTERNAL, error, span_attributes, log_fields
            )
            per_event = (_sum(m.predictions, result), _sum(m.processed, {"kind": "prediction"}))
            plan = _PredictionPlan(emit, model, _key(ids), per_event)
            plan = self._cache(self._prediction_plans, key, plan)
        return plan

    def _feedback_plan(self, e: Feedback) -> _FeedbackPlan:
        key = (e.model, e.model_version, e.correct, e.source, e.business_id)
        plan = self._feedback_plans.get(key)
        if plan is None:
            m, label = self._m, self._label
            counts = {
                "model_name": label("model", e.model),
                "model_version": label("model_version", e.model_version),
                "correct": "true" if e.correct else "false",
            }
            span_attributes = {
                "ml.model.name": e.model,
                "ml.model.version": e.model_version,
                "ml.feedback.correct": e.correct,
                "ml.feedback.source": e.source,
                "app.business_id": e.business_id,
            }
            log_fields = {
                "model": e.model,
                "model_version": e.model_version,
                "correct": e.correct,
                "source": e.source,
                "business_id": e.business_id,
            }
            emit = self._new_emit(
                e, f"feedback {e.model}", otlp.KIND_INTERNAL, None, span_attributes, log_fields
            )
            per_event = (_sum(m.feedback, counts), _sum(m.processed, {"kind": "feedback"}))
            plan = self._cache(self._feedback_plans, key, _FeedbackPlan(emit, per_event))
        return plan

    @staticmethod
    def _new_emit(
        event: Event, name: str, kind: int, error: str | None, span_attributes: Attrs, log_fields: Attrs
    ) -> _Emit:
        kind_name = KIND_OF[type(event)]
        log_attributes = {"kind": kind_name, "business_id": event.business_id}
        severity = otlp.SEVERITY_ERROR if error else otlp.SEVERITY_INFO
        return _Emit(
            kind=kind_name,
            level="error" if error else "info",
            span_head=otlp.span_head(name, kind),
            span_attributes=otlp.span_attributes(span_attributes),
            span_status=otlp.span_status(error),
            log_head=otlp.log_head(severity, f"otel_service.{kind_name}", log_attributes),
            log_fields=_compact(log_fields),
        )

    # -- per event -----------------------------------------------------------------------------

    def _llm(self, env: Envelope, e: LlmCall, sums: _Sums | None, out: Recorded | None) -> None:
        plan = self._llm_plan(e)
        total = e.total_tokens
        if total is None and (e.input_tokens is not None or e.output_tokens is not None):
            total = (e.input_tokens or 0) + (e.output_tokens or 0)
        cost = cost_of(
            plan.price,
            reported=e.cost_usd,
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cached_input_tokens=e.cached_input_tokens,
            reasoning_tokens=e.reasoning_tokens,
        )
        cost_usd = None if plan.cost_source == "unpriced" else cost.total
        if sums is not None:
            self._llm_metrics(env, e, plan, total, cost.by_type, cost_usd, sums)
        if out is not None:
            span_attributes = {
                "gen_ai.usage.input_tokens": e.input_tokens,
                "gen_ai.usage.output_tokens": e.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": e.cached_input_tokens,
                "gen_ai.usage.reasoning.output_tokens": e.reasoning_tokens,
                "gen_ai.conversation.id": e.conversation_id,
                "session.id": e.session_id,
                "user.id": e.user_id,
                "app.total_tokens": total,
                "app.cost_usd": cost_usd,
            }
            log_fields = (
                ("duration_ms", e.duration_ms),
                ("input_tokens", e.input_tokens),
                ("output_tokens", e.output_tokens),
                ("cached_input_tokens", e.cached_input_tokens),
                ("reasoning_tokens", e.reasoning_tokens),
                ("total_tokens", total),
                ("cost_usd", cost_usd),
                ("conversation_id", e.conversation_id),
                ("session_id", e.session_id),
                ("user_id", e.user_id),
                ("user_message_length", e.user_message_length),
                ("response_length", e.response_length),
            )
            self._emit(env, plan.emit, e.duration_ms, span_attributes, log_fields, out)

    def _llm_metrics(
        self,
        env: Envelope,
        e: LlmCall,
        plan: _LlmPlan,
        total: int | None,
        cost_by_type: tuple[tuple[str, float], ...],
        cost_usd: float | None,
        sums: _Sums,
    ) -> None:
        m = self._m
        seconds = e.duration_ms / 1000.0
        m.operation_duration.record_key(plan.duration, seconds, env.trace_id, env.span_id)
        m.lab_response_time.record_key(plan.tenant, seconds, env.trace_id, env.span_id)
        if e.input_tokens is not None:
            m.token_usage.record_key(plan.tokens_in, e.input_tokens)
        if e.output_tokens is not None:
            m.token_usage.record_key(plan.tokens_out, e.output_tokens)
        if e.user_message_length is not None:
            m.message_length.record_key(plan.message_user, e.user_message_length)
        if e.response_length is not None:
            m.message_length.record_key(plan.message_assistant, e.response_length)
        sums.add_event(plan.per_event)
        if total:
            sums.add(plan.tokens, total)
        if cost_usd is None:
            sums.add(plan.unpriced, 1)
            return
        for token_type, usd in cost_by_type:
            cost = plan.cost_by_type.get(token_type)
            if cost is None:
                attrs = {
                    **plan.base,
                    "gen_ai.token.type": token_type,
                    "cost.source": plan.cost_source,
                    "business_id": plan.business,
                }
                cost = plan.cost_by_type[token_type] = _sum(m.cost, attrs)
            sums.add(cost, usd)
        sums.add(plan.lab_cost, cost_usd)

    def _prediction_metrics(self, env: Envelope, e: Prediction, plan: _PredictionPlan, sums: _Sums) -> None:
        m = self._m
        sums.add_event(plan.per_event)
        m.prediction_duration.record_key(plan.ids, e.duration_ms / 1000.0, env.trace_id, env.span_id)
        if e.confidence is not None:
            m.prediction_confidence.record_key(plan.ids, e.confidence)
        if e.features:
            self.drift.observe(plan.model, e.features)

    def _prediction_emit(self, env: Envelope, e: Prediction, plan: _PredictionPlan, out: Recorded) -> None:
        span_attributes = {
            "ml.prediction.confidence": e.confidence,
            "ml.prediction.id": e.prediction_id,
        }
        log_fields = (
            ("duration_ms", e.duration_ms),
            ("confidence", e.confidence),
            ("prediction_id", e.prediction_id),
            ("features", e.features or None),
        )
        self._emit(env, plan.emit, e.duration_ms, span_attributes, log_fields, out)

    def _emit(
        self,
        env: Envelope,
        plan: _Emit,
        duration_ms: float,
        span_attributes: Attrs,
        log_fields: Sequence[tuple[str, Any]],
        out: Recorded,
    ) -> None:
        event: Event = env.event
        span_attributes["correlation_id"] = env.correlation_id
        for key, value in event.attributes.items():
            span_attributes[f"app.{key}"] = value
        out.spans.append(
            otlp.span(
                trace_id=env.trace_id,
                span_id=env.span_id,
                parent_span_id=env.parent_span_id,
                head=plan.span_head,
                start_ns=env.end_ns - int(duration_ms * 1e6),
                end_ns=env.end_ns,
                attributes=span_attributes,
                encoded_attributes=plan.span_attributes,
                status=plan.span_status,
            )
        )
        record: Attrs = {
            "timestamp": self._timestamp(env.end_ns),
            "service": self._service,
            "kind": plan.kind,
            "trace_id": env.trace_id,
            "span_id": env.span_id,
            "correlation_id": env.correlation_id,
            **plan.log_fields,
        }
        for key, value in log_fields:
            if value is not None:
                record[key] = value
        if event.attributes:
            record["attributes"] = event.attributes
        line = self._logger.log(plan.level, plan.kind, record)
        out.logs.append(
            otlp.log_record(
                trace_id=env.trace_id,
                span_id=env.span_id,
                time_ns=env.end_ns,
                observed_ns=env.received_ns,
                head=plan.log_head,
                body=line,
                attributes={"correlation_id": env.correlation_id},
            )
        )
