"""Turns envelopes into telemetry: metric measurements, one span, one log record and one stdout line.

Each event takes its plan (``plans``: the low-cardinality part, built once) and adds its own values
(``mapping``: where each field goes). Counters are summed per batch and added once per attribute set
(``sums``); histograms (in-process ``FastHistogram`` s) are recorded per event, with the event's span
as exemplar on the durations. Recording metrics and emitting the span and log are separate steps, so
a replay after a restart can do either alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ...model.events import Event, LlmCall, Prediction
from ...model.pricing import PriceTable, cost_of
from ...spool.record import Envelope
from ...telemetry.cardinality import GUARDED_ATTRIBUTES, LabelGuard
from ...telemetry.drift import DriftTracker
from ...telemetry.instruments import WorkerInstruments
from ...telemetry.logs import EventLogger
from .. import otlp
from .emit import Emit
from .plans import FeedbackPlan, LlmPlan, Planner, PredictionPlan
from .sums import Attrs, Sums, sum_of

__all__ = ["Derived", "Recorded", "Recorder"]


class Derived(NamedTuple):
    """What the recorder works out for an LLM call beyond its fields (the event store keeps it)."""

    provider: str
    total_tokens: int | None
    cost_usd: float | None
    cost_source: str


@dataclass(slots=True)
class Recorded:
    """The OTLP items (serialized Span and LogRecord bodies) a batch produced, in envelope order, and
    each envelope's ``Derived`` values (``None`` but for LLM calls), replayed ones included."""

    spans: list[bytes] = field(default_factory=list)
    logs: list[bytes] = field(default_factory=list)
    derived: list[Derived | None] = field(default_factory=list)


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
        kept_labels: Mapping[str, Iterable[str]] | None = None,
        label_idle_seconds: float = 0.0,
        drift: DriftTracker | None = None,
    ) -> None:
        self._m = instruments
        self._logger = logger
        self._service = service_name
        self.drift = drift if drift is not None else DriftTracker()
        self._plans = Planner(
            instruments,
            prices=prices,
            default_provider=default_provider,
            max_tenants=max_tenants,
            max_label_values=max_label_values,
            kept=kept_labels,
            idle_seconds=label_idle_seconds,
        )
        self._timestamp = _Timestamps()

    def guards_state(self) -> dict[str, Any]:
        """Which values each label guard admitted (saved with the metric totals)."""
        return {name: guard.dump() for name, guard in self._plans.guards.items()}

    def restore_guards(self, state: dict[str, Any]) -> None:
        for name, dumped in state.items():
            guard = self._plans.guards.get(name)
            if guard is not None:
                guard.restore(dumped)

    def record(self, envelopes: Sequence[Envelope], *, replay: int = 0, counted: int = 0) -> Recorded:
        """Record the metrics of all but the first ``counted`` envelopes, and emit (log line, span,
        OTLP log record) all but the first ``replay`` — the prefixes a restart had already done."""
        out = Recorded()
        sums = Sums()
        guards = self._plans.guards.values()
        now = time.time()
        for guard in guards:
            guard.now = now
        used: dict[int, LlmPlan | PredictionPlan | FeedbackPlan] = {}
        for index, env in enumerate(envelopes):
            event = env.event
            if isinstance(event, LlmCall):
                plan: LlmPlan | PredictionPlan | FeedbackPlan = self._llm(
                    env, event, sums if index >= counted else None, out, index >= replay
                )
            elif isinstance(event, Prediction):
                out.derived.append(None)
                plan = prediction = self._plans.prediction(event)
                if index >= counted:
                    self._prediction_metrics(env, event, prediction, sums)
                if index >= replay:
                    self._emit(env, prediction.emit, event.duration_ms, (), out)
            else:  # feedback: counters, and a span and log without values of their own
                out.derived.append(None)
                plan = self._plans.feedback(event)
                if index >= counted:
                    sums.add_event(plan.per_event)
                if index >= replay:
                    self._emit(env, plan.emit, 0.0, (), out)
            used[id(plan)] = plan
        for guard in guards:
            overflow = guard.take_overflow()
            if overflow:
                sums.add(sum_of(self._m.label_overflow, {"attribute": guard.name}), overflow)
        sums.flush()
        self._age_labels(guards, used.values())
        self._logger.flush()
        return out

    def _age_labels(
        self, guards: Iterable[LabelGuard], used: Iterable[LlmPlan | PredictionPlan | FeedbackPlan]
    ) -> None:
        """Mark the label values of the plans a batch used as seen; merge the series of values that
        aged out into ``_OTHER`` (after the batch's sums: none of them comes back) and count them."""
        for plan in used:
            for guard, value in plan.labels:
                guard.touch(value)
        for guard in guards:
            aged = guard.take_aged()
            if aged:
                self._m.fold(GUARDED_ATTRIBUTES[guard.name], frozenset(aged))
                self._m.label_aged_out.add_key((("attribute", guard.name),), len(aged))
                self._plans.forget()

    def _llm(self, env: Envelope, e: LlmCall, sums: Sums | None, out: Recorded, emit: bool) -> LlmPlan:
        plan = self._plans.llm(e)
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
        out.derived.append(Derived(plan.provider, total, cost_usd, plan.cost_source))
        if sums is not None:
            self._llm_metrics(env, e, plan, total, cost.by_type, cost_usd, sums)
        if emit:
            self._emit(env, plan.emit, e.duration_ms, (total, cost_usd), out)
        return plan

    def _llm_metrics(
        self,
        env: Envelope,
        e: LlmCall,
        plan: LlmPlan,
        total: int | None,
        cost_by_type: tuple[tuple[str, float], ...],
        cost_usd: float | None,
        sums: Sums,
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
        if e.success_rate is not None:
            m.success_rate.record_key(plan.tenant, e.success_rate)
        if e.user_satisfaction is not None:
            m.user_satisfaction.record_key(plan.tenant, e.user_satisfaction)
        sums.add_event(plan.per_event)
        if total:
            # As a double, as the SDK's own sums are: valid counts (up to 2^63-1 each) can add up
            # beyond int64, which OTLP cannot encode (one such push would fail for good).
            sums.add(plan.tokens, float(total))
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
                cost = plan.cost_by_type[token_type] = sum_of(m.cost, attrs)
            sums.add(cost, usd)
        sums.add(plan.lab_cost, cost_usd)

    def _prediction_metrics(self, env: Envelope, e: Prediction, plan: PredictionPlan, sums: Sums) -> None:
        m = self._m
        sums.add_event(plan.per_event)
        m.prediction_duration.record_key(plan.ids, e.duration_ms / 1000.0, env.trace_id, env.span_id)
        if e.confidence is not None:
            m.prediction_confidence.record_key(plan.ids, e.confidence)
        if e.features:
            self.drift.observe(plan.model, e.features)

    def _emit(
        self, env: Envelope, plan: Emit, duration_ms: float, derived: tuple[Any, ...], out: Recorded
    ) -> None:
        """The event's span and log record: the plan's constant part plus the event's own fields
        (``derived``: its derived values, as ``plan.fields.derived`` names them)."""
        event: Event = env.event
        span_attributes, log_fields = plan.fields.own(event, derived)
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
                sampled=env.sampled,
                tracestate=env.tracestate,
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
        record.update(log_fields)
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
                sampled=env.sampled,
            )
        )
