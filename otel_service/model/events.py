"""The event model: what apps send, as strict msgspec structures.

Version 1 of the event schema. Adding an optional field is a minor change; removing or retyping one is
a major change (see CHANGELOG.md).
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Literal, TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "KIND_OF",
    "MAX_ATTRIBUTES",
    "MAX_FEATURES",
    "SCHEMA_VERSION",
    "TYPE_OF_KIND",
    "Event",
    "Feedback",
    "LabTrack",
    "LlmCall",
    "Prediction",
    "text_fields",
]

SCHEMA_VERSION = "1.1"

MAX_ATTRIBUTES = 64
MAX_FEATURES = 64
_INT64 = 2**63 - 1
# (?![\s\S]) ends the string exactly, in Python and in the ECMA dialect of JSON Schema alike: $ also
# matches before a final newline in Python (msgspec applies patterns with re.search), \Z is not ECMA.
_END = r"(?![\s\S])"
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*" + _END
_KEY = r"^[A-Za-z_][A-Za-z0-9_.\-]*" + _END

#: Identifiers and labels refuse control characters. The pattern is published in the JSON schema;
#: ``_validation`` enforces it (see ``text_fields``) rather than msgspec, whose per-string regex
#: search costs more than the rest of an event's validation and is provably unneeded for most bodies.
_TEXT_SCHEMA = {"pattern": _NO_CONTROL}
#: An identifier (conversation, session, user, business...): no control characters, bounded.
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=256, extra_json_schema=_TEXT_SCHEMA)]
#: A low-cardinality label value (model, intent, response type...): short, no control characters.
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=128, extra_json_schema=_TEXT_SCHEMA)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64)]
Millis = Annotated[float, msgspec.Meta(ge=0, le=86_400_000)]
Usd = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
#: The lab's ``success_rate`` (it sends 1.0 or 0.0): the figure is kept, and decides ``success``.
LabRate = Annotated[float, msgspec.Meta(ge=0, le=1, description="0..1; below 0.5 the call counts as failed.")]
#: A user's satisfaction with a call. The lab's ``MetricsData`` has it as a bare optional number; 0 to 5
#: holds both a rating (1-5 stars) and a 0..1 score, and refuses what is neither.
Satisfaction = Annotated[
    float, msgspec.Meta(ge=0, le=5, description="The user's satisfaction: a 0..1 score or a 1-5 rating.")
]
HexTraceId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}" + _END)]
HexSpanId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}" + _END)]
#: RFC 3339 with a time zone, or Unix seconds.
Timestamp = datetime | Annotated[float, msgspec.Meta(ge=0, le=10_000_000_000)]
AttrKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_KEY)]
AttrValue = (
    Annotated[str, msgspec.Meta(max_length=4096)]
    | bool
    | Annotated[int, msgspec.Meta(ge=-_INT64 - 1, le=_INT64)]
    | Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
)
Attributes = Annotated[dict[AttrKey, AttrValue], msgspec.Meta(max_length=MAX_ATTRIBUTES)]
Features = Annotated[
    dict[AttrKey, Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]],
    msgspec.Meta(max_length=MAX_FEATURES),
]
Operation = Literal[
    "chat",
    "text_completion",
    "generate_content",
    "embeddings",
    "execute_tool",
    "create_agent",
    "invoke_agent",
]


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    correlation_id: Ident | None = None
    timestamp: Timestamp | None = None
    trace_id: HexTraceId | None = None
    span_id: HexSpanId | None = None
    business_id: Ident | None = None
    attributes: Attributes = {}


class LlmCall(_Base, tag="llm_call", tag_field="kind"):
    """One call to a language model (a chat turn, a completion, an embedding...)."""

    model: Label
    duration_ms: Millis
    operation: Operation = "chat"
    provider: Label | None = None
    response_model: Label | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cached_input_tokens: Count | None = None
    reasoning_tokens: Count | None = None
    #: The app's own total; the lab's ``tokens_used``. Defaults to input + output.
    total_tokens: Count | None = None
    cost_usd: Usd | None = None
    success: bool = True
    error_type: Label | None = None
    intent: Label | None = None
    response_type: Label | None = None
    conversation_id: Ident | None = None
    session_id: Ident | None = None
    user_id: Ident | None = None
    appointment_requested: bool = False
    appointment_booked: bool = False
    human_handoff: bool = False
    user_message_length: Count | None = None
    response_length: Count | None = None
    #: The app's own success figure for the call, 0..1 (the lab's ``success_rate``), beside ``success``.
    success_rate: Ratio | None = None
    user_satisfaction: Satisfaction | None = None


class Prediction(_Base, tag="prediction", tag_field="kind"):
    """One prediction of a (non-generative) ML model."""

    model: Label
    model_version: Label
    duration_ms: Millis
    result: Label | None = None
    confidence: Ratio | None = None
    success: bool = True
    error_type: Label | None = None
    prediction_id: Ident | None = None
    features: Features = {}


class Feedback(_Base, tag="feedback", tag_field="kind"):
    """Ground truth for an earlier prediction: was it correct?"""

    model: Label
    model_version: Label
    correct: bool
    prediction_id: Ident | None = None
    source: Label | None = None


class LabTrack(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The lab's flat ``POST /track`` schema: what its ``MetricsData`` carries, plus correlation/timestamp."""

    business_id: Ident
    response_time_ms: Millis
    tokens_used: Count
    conversation_id: Ident | None = None
    session_id: Ident | None = None
    success_rate: LabRate | None = None
    user_satisfaction: Satisfaction | None = None
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    api_cost_usd: Usd | None = None
    model_name: Label = "gemini-1.5-flash"
    intent_detected: Label = "unknown"
    appointment_requested: bool = False
    human_handoff_requested: bool = False
    appointment_booked: bool = False
    user_message_length: Count | None = None
    ai_response_length: Count | None = None
    response_type: Label = "unknown"
    correlation_id: Ident | None = None
    timestamp: Timestamp | None = None

    def to_llm_call(self) -> LlmCall:
        """The same call in the native model."""
        return LlmCall(
            model=self.model_name,
            duration_ms=float(self.response_time_ms),
            input_tokens=self.prompt_tokens,
            output_tokens=self.completion_tokens,
            total_tokens=self.tokens_used,
            cost_usd=self.api_cost_usd,
            success=self.success_rate is None or self.success_rate >= 0.5,
            success_rate=self.success_rate,
            user_satisfaction=self.user_satisfaction,
            intent=self.intent_detected,
            response_type=self.response_type,
            business_id=self.business_id,
            conversation_id=self.conversation_id,
            session_id=self.session_id,
            appointment_requested=self.appointment_requested,
            appointment_booked=self.appointment_booked,
            human_handoff=self.human_handoff_requested,
            user_message_length=self.user_message_length,
            response_length=self.ai_response_length,
            correlation_id=self.correlation_id,
            timestamp=self.timestamp,
        )


Event: TypeAlias = LlmCall | Prediction | Feedback


EVENT_TYPES: tuple[type[LlmCall], type[Prediction], type[Feedback]] = (
    LlmCall,
    Prediction,
    Feedback,
)
#: Each event type's ``kind`` tag, and the type of each tag.
KIND_OF: dict[type[Event], str] = {t: str(t.__struct_config__.tag) for t in EVENT_TYPES}
TYPE_OF_KIND: dict[str, type[Event]] = {kind: t for t, kind in KIND_OF.items()}


def text_fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of ``struct`` typed ``Ident`` or ``Label`` (optional or not): no control characters."""
    hints = typing.get_type_hints(struct, include_extras=True)
    text = {Ident, Label, Ident | None, Label | None}
    return tuple(name for name in struct.__struct_fields__ if hints[name] in text)
