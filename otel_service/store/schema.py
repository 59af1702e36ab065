"""The store's tables, in plain SQL: one row per accepted event (``events``), the lab's ``ai_metrics``
as a view over its LLM calls, and the store's own counts (``store_counts``).

An event's ID is its ``(trace_id, span_id)``: the span ID is made at intake, once per event, and fixed
in the spool record, so the replay of a record after a crash finds its row and inserts nothing. The
primary key is also the index by trace ID; the others are by time, by business and time, and by
correlation ID.

The two indexes by random IDs (trace and correlation) lead with the minute the event was received
(``received_minute``): a random key lands anywhere in its index, and every insert then rewrites a page
of it at the next commit, so the store's cost per event grew with its size (47 µs per event at
600,000 rows, against 17 µs without those indexes). Led by the minute, each minute's inserts stay in
that minute's part of the index, which is small and dirtied again by each commit (28 µs, measured
with minutes of 60,000 events). A lookup by ID seeks once per minute retained (``queries.lookup``):
a few milliseconds for a week.

Times are Unix nanoseconds (``BIGINT``, the span's end: the event's own time; the
lab's view shows it as RFC 3339 ``created_at``). Types are plain (``TEXT``, ``BIGINT``, ``DOUBLE
PRECISION``, ``BOOLEAN``) so PostgreSQL takes the same statements.

Each event kind is inserted with its own columns only (the others stay ``NULL``): a bound value costs
about 0.2 µs, and the store's cost per event is paid in the export process.

Length: one declaration per column (44 of them), and the row each event kind makes of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from ..model.events import Event, Feedback, LlmCall, Prediction
from .dialect import CREATED_AT, PLACEHOLDER

__all__ = [
    "COLUMNS",
    "COUNTED_OUTCOMES",
    "INSERTS",
    "KIND_COLUMNS",
    "MINUTE_NS",
    "SCHEMA",
    "TABLE",
    "VERSION",
    "DerivedRecord",
    "DerivedValues",
    "StoredEnvelope",
    "row_of",
]

TABLE = "events"
#: The ID indexes' leading unit (``received_minute``).
MINUTE_NS = 60_000_000_000
#: ``PRAGMA user_version`` of this schema; a file with tables and an older version is not written.
VERSION = 2
#: The largest integer a ``BIGINT`` holds; a derived total beyond it (two valid counts added) is stored
#: as a double, as the metrics count it.
_INT64 = 2**63 - 1
#: The row counts the store keeps with its rows (in the same transactions): written, and deleted by
#: retention for age or for size.
COUNTED_OUTCOMES = ("written", "expired", "evicted_for_size")

#: (column, type, meaning): the table, in order.
COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("trace_id", "TEXT NOT NULL", "the event's trace (32 hex); with span_id, the event's ID"),
    ("span_id", "TEXT NOT NULL", "the event's own span (16 hex), made at intake"),
    ("kind", "TEXT NOT NULL", "llm_call, prediction or feedback"),
    ("source", "TEXT NOT NULL", "track (the lab's /track) or events (/v1/events)"),
    ("time_unix_ns", "BIGINT NOT NULL", "the event's time (its span's end), Unix nanoseconds"),
    ("received_unix_ns", "BIGINT NOT NULL", "when intake accepted it"),
    ("received_minute", "BIGINT NOT NULL", "received_unix_ns // 60 s: leads the indexes by ID"),
    ("correlation_id", "TEXT NOT NULL", "the correlation ID"),
    ("parent_span_id", "TEXT", "the app's span this event's span is a child of"),
    ("business_id", "TEXT", "the tenant"),
    ("conversation_id", "TEXT", None),
    ("session_id", "TEXT", None),
    ("user_id", "TEXT", None),
    ("model", "TEXT NOT NULL", "the model (the lab's model_name)"),
    ("provider", "TEXT", "gen_ai.provider.name: sent, else inferred from the model"),
    ("operation", "TEXT", "gen_ai.operation.name (LLM calls)"),
    ("response_model", "TEXT", None),
    ("duration_ms", "DOUBLE PRECISION", "the lab's response_time_ms; prediction latency"),
    ("success", "BOOLEAN", "LLM calls and predictions"),
    ("error_type", "TEXT", "as sent, on failures"),
    ("input_tokens", "BIGINT", "the lab's prompt_tokens"),
    ("output_tokens", "BIGINT", "the lab's completion_tokens"),
    ("cached_input_tokens", "BIGINT", None),
    ("reasoning_tokens", "BIGINT", None),
    ("total_tokens", "BIGINT", "the lab's tokens_used: sent, else input + output"),
    ("cost_usd", "DOUBLE PRECISION", "reported or computed from the price table; NULL when unpriced"),
    ("cost_source", "TEXT", "reported, computed or unpriced"),
    ("intent", "TEXT", "the lab's intent_detected"),
    ("response_type", "TEXT", None),
    ("appointment_requested", "BOOLEAN", None),
    ("appointment_booked", "BOOLEAN", None),
    ("human_handoff", "BOOLEAN", "the lab's human_handoff_requested"),
    ("user_message_length", "BIGINT", None),
    ("response_length", "BIGINT", "the lab's ai_response_length"),
    ("user_satisfaction", "DOUBLE PRECISION", "as sent (the lab's MetricsData)"),
    ("success_rate", "DOUBLE PRECISION", "as sent, 0..1 (the lab's)"),
    ("model_version", "TEXT", "predictions and feedback"),
    ("prediction_id", "TEXT", "predictions and feedback"),
    ("prediction_result", "TEXT", None),
    ("confidence", "DOUBLE PRECISION", None),
    ("feedback_correct", "BOOLEAN", "feedback: was the prediction right"),
    ("feedback_source", "TEXT", None),
    ("attributes", "TEXT", "the event's attributes, a JSON object (NULL: none)"),
    ("features", "TEXT", "a prediction's features, a JSON object (NULL: none)"),
)
_NAMES = tuple(name for name, _, _ in COLUMNS)

#: The lab's ``ai_metrics`` columns over the LLM calls, so its queries run unchanged
#: (``SELECT business_id, AVG(response_time_ms) FROM ai_metrics GROUP BY business_id``).
_LAB_VIEW = f"""CREATE VIEW IF NOT EXISTS ai_metrics AS SELECT
    trace_id || span_id AS id, business_id, conversation_id, session_id,
    duration_ms AS response_time_ms,
    COALESCE(success_rate, CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
    total_tokens AS tokens_used, input_tokens AS prompt_tokens, output_tokens AS completion_tokens,
    cost_usd AS api_cost_usd, model AS model_name, intent AS intent_detected,
    appointment_requested, human_handoff AS human_handoff_requested, appointment_booked,
    user_message_length, response_length AS ai_response_length, response_type, user_satisfaction,
    {CREATED_AT} AS created_at
FROM events WHERE kind = 'llm_call'"""

#: Every statement that makes an empty store (each idempotent).
SCHEMA: tuple[str, ...] = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    "
    + ",\n    ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS)
    + ",\n    PRIMARY KEY (received_minute, trace_id, span_id)\n)",
    f"CREATE INDEX IF NOT EXISTS idx_events_time ON {TABLE} (time_unix_ns)",
    f"CREATE INDEX IF NOT EXISTS idx_events_business_time ON {TABLE} (business_id, time_unix_ns)",
    # (A correlation ID that is its event's trace ID, the rule when the app sends none, is found by
    # the primary key: half the store's CPU per event is this index when every event has it.)
    f"CREATE INDEX IF NOT EXISTS idx_events_correlation ON {TABLE} (received_minute, correlation_id) "
    "WHERE correlation_id <> trace_id",
    _LAB_VIEW,
    "CREATE TABLE IF NOT EXISTS store_counts (outcome TEXT PRIMARY KEY, row_count BIGINT NOT NULL)",
    *(
        f"INSERT INTO store_counts (outcome, row_count) VALUES ('{outcome}', 0) "
        "ON CONFLICT (outcome) DO NOTHING"
        for outcome in COUNTED_OUTCOMES
    ),
)

#: The columns each event kind fills, in the order ``row_of`` gives their values.
_COMMON = (
    "trace_id",
    "span_id",
    "kind",
    "source",
    "time_unix_ns",
    "received_unix_ns",
    "received_minute",
    "correlation_id",
    "parent_span_id",
    "business_id",
    "model",
    "attributes",
)
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "llm_call": (
        *_COMMON, "conversation_id", "session_id", "user_id", "provider", "operation", "response_model",
        "duration_ms", "success", "error_type", "input_tokens", "output_tokens", "cached_input_tokens",
        "reasoning_tokens", "total_tokens", "cost_usd", "cost_source", "intent", "response_type",
        "appointment_requested", "appointment_booked", "human_handoff", "user_message_length",
        "response_length", "user_satisfaction", "success_rate",
    ),
    "prediction": (
        *_COMMON, "duration_ms", "success", "error_type", "model_version", "prediction_id",
        "prediction_result", "confidence", "features",
    ),
    "feedback": (*_COMMON, "model_version", "prediction_id", "feedback_correct", "feedback_source"),
}  # fmt: skip
#: One row of each kind; a row already there (the replay of its record after a crash) is left as it is.
INSERTS = {
    kind: f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join([PLACEHOLDER] * len(names))}) "
    "ON CONFLICT (received_minute, trace_id, span_id) DO NOTHING"
    for kind, names in KIND_COLUMNS.items()
}


class StoredEnvelope(Protocol):
    """What the store reads of a spool record (``spool.record.Envelope``)."""

    @property
    def event(self) -> Event: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def span_id(self) -> str: ...
    @property
    def parent_span_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def received_ns(self) -> int: ...
    @property
    def source(self) -> str: ...


class DerivedValues(Protocol):
    """What the recorder worked out for an LLM call (``export.recorder.Derived``): stored as it is,
    never worked out again here."""

    @property
    def provider(self) -> str: ...
    @property
    def total_tokens(self) -> int | None: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def cost_source(self) -> str: ...


class DerivedRecord(NamedTuple):
    """``DerivedValues`` as the store process receives them (an array: the recorder's ``Derived``)."""

    provider: str
    total_tokens: int | None
    cost_usd: float | None
    cost_source: str


def _json(values: Mapping[str, Any]) -> str | None:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")) if values else None


def row_of(envelope: StoredEnvelope, derived: DerivedValues | None) -> tuple[str, tuple[Any, ...]]:
    """The kind of one event and its row's values, in ``KIND_COLUMNS[kind]`` order."""
    e = envelope.event
    if isinstance(e, LlmCall):
        kind = "llm_call"
    elif isinstance(e, Prediction):
        kind = "prediction"
    else:
        assert isinstance(e, Feedback)
        kind = "feedback"
    common = (
        envelope.trace_id, envelope.span_id, kind, envelope.source, envelope.end_ns, envelope.received_ns,
        envelope.received_ns // MINUTE_NS, envelope.correlation_id, envelope.parent_span_id, e.business_id,
        e.model, _json(e.attributes),
    )  # fmt: skip
    if isinstance(e, LlmCall):
        total: int | float | None
        if derived is None:  # (the recorder gives every LLM call its values; kept whole regardless)
            provider, total, cost = e.provider, e.total_tokens, e.cost_usd
            source = None if cost is None else "reported"
        else:
            provider, total = derived.provider, derived.total_tokens
            cost, source = derived.cost_usd, derived.cost_source
        if total is not None and total > _INT64:
            total = float(total)
        return kind, (
            *common, e.conversation_id, e.session_id, e.user_id, provider, e.operation,
            e.response_model, e.duration_ms, e.success, e.error_type, e.input_tokens, e.output_tokens,
            e.cached_input_tokens, e.reasoning_tokens, total, cost, source, e.intent, e.response_type,
            e.appointment_requested, e.appointment_booked, e.human_handoff, e.user_message_length,
            e.response_length,
            # Optional fields of newer event schemas: read when the event has them.
            getattr(e, "user_satisfaction", None), getattr(e, "success_rate", None),
        )  # fmt: skip
    if isinstance(e, Prediction):
        return kind, (
            *common, e.duration_ms, e.success, e.error_type, e.model_version, e.prediction_id, e.result,
            e.confidence, _json(e.features),
        )  # fmt: skip
    return kind, (*common, e.model_version, e.prediction_id, e.correct, e.source)
