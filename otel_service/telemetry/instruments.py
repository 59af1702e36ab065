"""The metric catalog: every instrument the service records, with its unit, buckets and limits.

Names follow the OpenTelemetry GenAI semantic conventions where they exist; the lab's Prometheus names
(``ai_requests_total``...) are kept as separate instruments whose units make the Prometheus translation
produce exactly those names.

Length: one declaration per instrument (about forty), kept together so the catalog reads as one list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from opentelemetry.metrics import Meter, Observation
from opentelemetry.sdk.metrics.view import View

from .aggregates import Aggregates, FastCounter
from .histograms import FastHistogram

__all__ = [
    "IntakeInstruments",
    "WorkerInstruments",
    "create_views",
    "observe_store_rows",
    "register_observables",
]

#: Advised boundaries of ``gen_ai.client.operation.duration`` (seconds).
GEN_AI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
#: Advised boundaries of ``gen_ai.client.token.usage``.
GEN_AI_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
#: prometheus_client's default buckets, which the lab's ``ai_response_time_seconds`` used.
LAB_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: The ML lab's prediction latency buckets (seconds).
ML_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: The lab's success rate (0..1) in tenths.
RATE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: User satisfaction: tenths up to 1 (a 0..1 score), then halves up to 5 (a 1-5 rating).
SATISFACTION_BUCKETS = (*RATE_BUCKETS, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
HTTP_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

_BUCKETS: dict[str, Sequence[float]] = {
    "gen_ai.client.operation.duration": GEN_AI_DURATION_BUCKETS,
    "gen_ai.client.token.usage": GEN_AI_TOKEN_BUCKETS,
    "ai_response_time": LAB_DURATION_BUCKETS,
    "ml.prediction.duration": ML_DURATION_BUCKETS,
    "ml.prediction.confidence": CONFIDENCE_BUCKETS,
    "ai.message.length": LENGTH_BUCKETS,
    "ai.success_rate": RATE_BUCKETS,
    "ai.user_satisfaction": SATISFACTION_BUCKETS,
    "http.server.request.duration": HTTP_DURATION_BUCKETS,
}


def create_views() -> list[View]:
    """No custom views: histograms with advised buckets are ``FastHistogram`` s; the cardinality cap
    of SDK instruments is set on the readers."""
    return []


@dataclass(frozen=True, slots=True)
class WorkerInstruments:
    """Instruments recorded by the exporter, per processed event."""

    operation_duration: FastHistogram
    token_usage: FastHistogram
    lab_requests: FastCounter
    lab_response_time: FastHistogram
    lab_tokens: FastCounter
    lab_cost: FastCounter
    lab_appointments: FastCounter
    lab_handoffs: FastCounter
    cost: FastCounter
    unpriced: FastCounter
    outcomes: FastCounter
    message_length: FastHistogram
    success_rate: FastHistogram
    user_satisfaction: FastHistogram
    predictions: FastCounter
    prediction_duration: FastHistogram
    prediction_confidence: FastHistogram
    feedback: FastCounter
    processed: FastCounter
    label_overflow: FastCounter
    label_aged_out: FastCounter
    export_items: FastCounter
    retries: FastCounter
    replayed: FastCounter
    duplicates: FastCounter
    dropped: FastCounter

    def fold(self, attributes: frozenset[str], values: frozenset[str]) -> None:
        """Merge the series whose ``attributes`` hold one of ``values`` into their ``_OTHER`` series,
        in every instrument (the caller holds their lock)."""
        for instrument in fields(self):
            getattr(self, instrument.name).fold(attributes, values)

    @classmethod
    def create(cls, aggregates: Aggregates) -> WorkerInstruments:
        def histogram(name: str, unit: str, description: str) -> FastHistogram:
            return aggregates.histogram(name, unit=unit, description=description, bounds=_BUCKETS[name])

        counter = aggregates.counter

        return cls(
            operation_duration=histogram(
                "gen_ai.client.operation.duration", "s", "GenAI operation duration."
            ),
            token_usage=histogram(
                "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used."
            ),
            lab_requests=counter("ai_requests", unit="{request}", description="Total AI requests"),
            lab_response_time=histogram("ai_response_time", "s", "AI response time in seconds"),
            lab_tokens=counter("ai_tokens_used", unit="{token}", description="Total tokens used"),
            lab_cost=counter("ai_api_cost_usd", unit="{USD}", description="Total API cost in USD"),
            lab_appointments=counter(
                "appointments_requested",
                unit="{appointment}",
                description="Total appointment requests",
            ),
            lab_handoffs=counter(
                "human_handoffs", unit="{handoff}", description="Total human handoff requests"
            ),
            cost=counter(
                "ai.cost.usd",
                unit="{USD}",
                description="Cost of LLM calls in USD, by token type and where the figure came from.",
            ),
            unpriced=counter(
                "ai.cost.unpriced",
                unit="{call}",
                description="LLM calls whose cost is unknown (no reported cost, model not in the "
                "price table, or no token counts).",
            ),
            outcomes=counter(
                "ai.outcomes",
                unit="{event}",
                description="Business outcomes of AI conversations (appointments, handoffs).",
            ),
            message_length=histogram("ai.message.length", "{char}", "Length of user and AI messages."),
            # Dimensionless (see ml.prediction.confidence): Prometheus names stay ai_success_rate...
            success_rate=histogram(
                "ai.success_rate", "", "Success rate of each LLM call as the app reports it, 0..1."
            ),
            user_satisfaction=histogram(
                "ai.user_satisfaction", "", "User satisfaction reported with LLM calls (0..1 or 1-5)."
            ),
            predictions=counter(
                "ml.predictions",
                unit="{prediction}",
                description="Total number of predictions made",
            ),
            prediction_duration=histogram(
                "ml.prediction.duration", "s", "Time spent processing prediction requests"
            ),
            # Dimensionless, but no unit "1": it would render as _ratio only on some exporters.
            prediction_confidence=histogram("ml.prediction.confidence", "", "Confidence of predictions."),
            feedback=counter(
                "ml.feedback",
                unit="{feedback}",
                description="Ground-truth feedback on predictions, by correctness.",
            ),
            processed=counter(
                "otel_service.events.processed",
                unit="{event}",
                description="Events turned into telemetry by the exporter.",
            ),
            label_overflow=counter(
                "otel_service.attribute.overflow",
                unit="{value}",
                description="Metric attribute values replaced by _OTHER because the attribute's "
                "cardinality cap was reached.",
            ),
            label_aged_out=counter(
                "otel_service.attribute.aged_out",
                unit="{value}",
                description="Metric attribute values that gave their place up after going unseen "
                "(their series were merged into the attribute's _OTHER series, so totals stay whole).",
            ),
            export_items=counter(
                "otel_service.export.items",
                unit="{item}",
                description="Spans and log records sent over OTLP, by signal and outcome.",
            ),
            retries=counter(
                "otel_service.export.retries",
                unit="{request}",
                description="Export requests retried after a retryable failure.",
            ),
            replayed=counter(
                "otel_service.export.replayed",
                unit="{event}",
                description="Events whose metrics were recorded again after a restart (their spans "
                "and logs had been delivered before it).",
            ),
            duplicates=counter(
                "otel_service.export.duplicates",
                unit="{event}",
                description="Spans and log records sent again (possible duplicates downstream): "
                "after a restart, of events whose delivery was in flight (traces_and_logs), or after "
                "an export timeout (traces, logs).",
            ),
            dropped=counter(
                "otel_service.dropped",
                unit="{item}",
                description="Items discarded, by signal and reason (should stay 0).",
            ),
        )


def _observe(
    create: Callable[..., object],
    name: str,
    labels: tuple[str, ...],
    source: Callable[[], Mapping[Any, float]],
    *,
    unit: str,
    description: str,
) -> None:
    """An observable instrument whose points are ``source()``: label values tuple -> value."""
    create(
        name,
        callbacks=[
            lambda _: [
                Observation(value, dict(zip(labels, key, strict=True))) for key, value in source().items()
            ]
        ],
        unit=unit,
        description=description,
    )


def register_observables(
    meter: Meter,
    *,
    drift_scores: Callable[[], dict[tuple[str, str], float]],
    spool_bytes: Callable[[], int],
    spool_items: Callable[[], int],
    oldest_age: Callable[[], float],
) -> None:
    """Gauges read at collection time: drift per feature, the spool."""
    _observe(
        meter.create_observable_gauge,
        "data_drift_score",
        ("model_name", "feature"),
        drift_scores,
        unit="",
        description="Kolmogorov-Smirnov distance between a feature's reference and recent values.",
    )
    _observe(
        meter.create_observable_gauge,
        "otel_service.spool.size",
        (),
        lambda: {(): spool_bytes()},
        unit="By",
        description="Bytes of accepted events not yet delivered.",
    )
    _observe(
        meter.create_observable_gauge,
        "otel_service.spool.items",
        (),
        lambda: {(): spool_items()},
        unit="{event}",
        description="Accepted events whose spans and logs are not delivered yet.",
    )
    _observe(
        meter.create_observable_gauge,
        "otel_service.spool.oldest_age",
        (),
        lambda: {(): oldest_age()},
        unit="s",
        description="Age of the oldest accepted event not yet delivered.",
    )


def observe_store_rows(aggregates: Aggregates, counts: Callable[[], Mapping[str, int]]) -> None:
    """The event store's row counts, kept in the store itself (exact across restarts)."""
    aggregates.observe_counter(
        "otel_service.store.rows",
        ("outcome",),
        lambda: {(outcome,): n for outcome, n in counts().items()},
        unit="{row}",
        description="Rows of the event store: written (one per accepted event), and deleted by "
        "retention, for age (expired) or beyond the size bound (evicted_for_size). Events the store "
        'could not keep are in otel_service.dropped{signal="store"}.',
    )


@dataclass(frozen=True, slots=True)
class IntakeInstruments:
    """Instruments of the HTTP intake: event counts are read from plain counters (cheap on the
    request path), request durations go to an in-process histogram."""

    request_duration: FastHistogram
    stale_reads: FastCounter

    @classmethod
    def create(
        cls,
        aggregates: Aggregates,
        *,
        received: Callable[[], Mapping[tuple[str, str], int]],
        rejected: Callable[[], Mapping[tuple[str, str], int]],
        shards: Callable[[], Mapping[str, int]] = dict,
        counted_since: int | None = None,
    ) -> IntakeInstruments:
        """``counted_since``: when the event counts started (they carry on across restarts: the
        spool's start); the other series start with this process."""
        aggregates.observe_counter(
            "otel_service.events.received",
            ("endpoint", "kind"),
            received,
            unit="{event}",
            description="Events accepted by intake (202), by endpoint and kind.",
            start_ns=counted_since,
        )
        aggregates.observe_counter(
            "otel_service.events.rejected",
            ("endpoint", "reason"),
            rejected,
            unit="{event}",
            description="Events or requests refused by intake, by endpoint and reason.",
            start_ns=counted_since,
        )
        aggregates.observe_counter(
            "otel_service.intake.shard.records",
            ("outcome",),
            lambda: {(outcome,): n for outcome, n in shards().items() if n and outcome != "corrupt_bytes"},
            unit="{event}",
            description="Events copied from other intake processes' spool shards into the main spool "
            "(copied); after a crash, found copied already and skipped (already_copied), or copied "
            "again because that could not be told any more (possible_duplicate).",
        )
        aggregates.observe_counter(
            "otel_service.intake.shard.corrupt",
            (),
            lambda: {(): shards().get("corrupt_bytes", 0)},
            unit="By",
            description="Bytes of torn or corrupt records skipped in spool shards (an intake process "
            "killed mid-write); should stay 0.",
        )
        return cls(
            request_duration=aggregates.histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                bounds=_BUCKETS["http.server.request.duration"],
            ),
            stale_reads=aggregates.counter(
                "otel_service.status.stale_reads",
                unit="{read}",
                description="Status reads (/metrics, /health/detailed) answered before export had "
                "recorded every event acknowledged before them (OTELSVC_READ_AFTER_WRITE_MS passed).",
            ),
        )
