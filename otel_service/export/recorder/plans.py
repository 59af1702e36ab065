"""Plans: the part of an event's telemetry that depends only on its low-cardinality fields.

Most of an event's telemetry depends only on its kind, model, operation, provider, tenant, intent,
outcome flags and success: metric attribute sets, the span's name and constant attributes, the log
record's severity and constant fields. A plan holds that part, built and encoded once per distinct
combination and cached (bounded), so each event only adds what is its own: values, IDs and times.
Plans whose labels hit a cardinality cap are not cached, so every such event is counted as an
overflow. Each plan names the guarded label values it holds (``labels``), so the events using it keep
those values from ageing out; when values do age out, every cached plan is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...model.events import Feedback, LlmCall, Prediction
from ...model.pricing import ModelPrice, PriceTable
from ...model.providers import infer_provider
from ...telemetry.cardinality import LabelGuard
from ...telemetry.instruments import WorkerInstruments
from .. import otlp
from .emit import Emit, constant_values, new_emit
from .mapping import FEEDBACK, LLM_CALL, PREDICTION, FieldMap
from .sums import Attrs, Key, Sum, key_of, sum_of

__all__ = ["FeedbackPlan", "LlmPlan", "Planner", "PredictionPlan"]

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
#: The guarded label values a plan holds, with their guards.
Labels = tuple[tuple[LabelGuard, str], ...]
_LLM = FieldMap(LLM_CALL)
_PREDICTION = FieldMap(PREDICTION)
_FEEDBACK = FieldMap(FEEDBACK)


@dataclass(slots=True)
class LlmPlan:
    emit: Emit
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
    per_event: tuple[Sum, ...]
    tokens: Sum
    lab_cost: Sum
    unpriced: Sum
    labels: Labels
    #: gen_ai.provider.name as sent or inferred (before the label guard).
    provider: str
    cost_by_type: dict[str, Sum] = field(default_factory=dict)


@dataclass(slots=True)
class PredictionPlan:
    emit: Emit
    model: str
    ids: Key
    per_event: tuple[Sum, ...]
    labels: Labels


@dataclass(slots=True)
class FeedbackPlan:
    emit: Emit
    per_event: tuple[Sum, ...]
    labels: Labels


def _error(event: LlmCall | Prediction) -> str | None:
    return None if event.success else (event.error_type or "_OTHER")


class Planner:
    """Builds, caches and guards the plans of each event kind."""

    def __init__(
        self,
        instruments: WorkerInstruments,
        *,
        prices: PriceTable,
        default_provider: str,
        max_tenants: int,
        max_label_values: int,
        kept: Mapping[str, Iterable[str]] | None = None,
        idle_seconds: float = 0.0,
    ) -> None:
        """``kept``: per guard, values always admitted; ``idle_seconds``: after how long unseen an
        admitted value gives its place up to a new one (0: never)."""
        self._m = instruments
        self._prices = prices
        self._default_provider = default_provider
        kept = kept or {}
        self.guards = {
            name: LabelGuard(
                name,
                max_tenants if name == "business_id" else max_label_values,
                kept=kept.get(name, ()),
                idle_seconds=idle_seconds,
            )
            for name in _GUARDED
        }
        self._overflowed = False
        #: The guarded values of the plan being built.
        self._labels: list[tuple[LabelGuard, str]] = []
        self._llm: dict[tuple[Any, ...], LlmPlan] = {}
        self._prediction: dict[tuple[Any, ...], PredictionPlan] = {}
        self._feedback: dict[tuple[Any, ...], FeedbackPlan] = {}

    def _label(self, name: str, value: str) -> str:
        guard = self.guards[name]
        before = guard.overflowed
        guarded = guard(value)
        if guard.overflowed != before:
            self._overflowed = True
        else:
            self._labels.append((guard, guarded))
        return guarded

    def take_labels(self) -> Labels:
        labels = tuple(self._labels)
        self._labels.clear()
        return labels

    def forget(self) -> None:
        """Drop every cached plan (values they hold aged out)."""
        self._llm.clear()
        self._prediction.clear()
        self._feedback.clear()

    def _cache(self, plans: dict[tuple[Any, ...], _P], key: tuple[Any, ...], plan: _P) -> _P:
        """Keep ``plan`` unless building it replaced a label with ``_OTHER`` (then every event must
        go through the guard, to be counted)."""
        if not self._overflowed:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = plan
        self._overflowed = False
        return plan

    def llm(self, e: LlmCall) -> LlmPlan:
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
        plan = self._llm.get(key)
        if plan is None:
            plan = self._cache(self._llm, key, self._new_llm(e))
        return plan

    def _new_llm(self, e: LlmCall) -> LlmPlan:
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
            sum_of(
                m.lab_requests,
                {
                    "business_id": business,
                    "intent": label("intent", e.intent or "unknown"),
                    "response_type": label("response_type", e.response_type or "unknown"),
                },
            ),
            sum_of(m.processed, {"kind": "llm_call"}),
        ]
        if e.appointment_requested:
            per_event.append(sum_of(m.lab_appointments, tenant))
            per_event.append(sum_of(m.outcomes, {**tenant, "outcome": "appointment_requested"}))
        if e.appointment_booked:
            per_event.append(sum_of(m.outcomes, {**tenant, "outcome": "appointment_booked"}))
        if e.human_handoff:
            per_event.append(sum_of(m.lab_handoffs, tenant))
            per_event.append(sum_of(m.outcomes, {**tenant, "outcome": "human_handoff"}))
        values = constant_values(e, _LLM, provider=provider, error=error, cost_source=source)
        return LlmPlan(
            emit=new_emit(e, f"{e.operation} {e.model}", otlp.KIND_CLIENT, error, _LLM, values),
            price=price,
            cost_source=source,
            base=base,
            business=business,
            duration=key_of(duration),
            tokens_in=key_of({**base, "gen_ai.token.type": "input"}),
            tokens_out=key_of({**base, "gen_ai.token.type": "output"}),
            tenant=key_of(tenant),
            message_user=key_of({"role": "user", "gen_ai.request.model": model}),
            message_assistant=key_of({"role": "assistant", "gen_ai.request.model": model}),
            per_event=tuple(per_event),
            tokens=sum_of(m.lab_tokens, {"business_id": business, "model": model}),
            lab_cost=sum_of(m.lab_cost, tenant),
            unpriced=sum_of(m.unpriced, {"gen_ai.request.model": model}),
            labels=self.take_labels(),
            provider=provider,
        )

    def prediction(self, e: Prediction) -> PredictionPlan:
        key = (e.model, e.model_version, e.result, e.success, e.error_type, e.business_id)
        plan = self._prediction.get(key)
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
            values = constant_values(e, _PREDICTION, error=error)
            emit = new_emit(e, f"predict {e.model}", otlp.KIND_INTERNAL, error, _PREDICTION, values)
            per_event = (sum_of(m.predictions, result), sum_of(m.processed, {"kind": "prediction"}))
            plan = self._cache(
                self._prediction,
                key,
                PredictionPlan(emit, model, key_of(ids), per_event, self.take_labels()),
            )
        return plan

    def feedback(self, e: Feedback) -> FeedbackPlan:
        key = (e.model, e.model_version, e.correct, e.source, e.business_id)
        plan = self._feedback.get(key)
        if plan is None:
            m, label = self._m, self._label
            counts = {
                "model_name": label("model", e.model),
                "model_version": label("model_version", e.model_version),
                "correct": "true" if e.correct else "false",
            }
            values = constant_values(e, _FEEDBACK)
            emit = new_emit(e, f"feedback {e.model}", otlp.KIND_INTERNAL, None, _FEEDBACK, values)
            per_event = (sum_of(m.feedback, counts), sum_of(m.processed, {"kind": "feedback"}))
            plan = self._cache(self._feedback, key, FeedbackPlan(emit, per_event, self.take_labels()))
        return plan
