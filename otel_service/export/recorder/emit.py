"""The constant part of an event's span and log record, built and encoded once per plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...model.events import KIND_OF, Event
from .. import otlp
from .mapping import FieldMap
from .sums import Attrs

__all__ = ["Emit", "constant_values", "new_emit"]


@dataclass(frozen=True, slots=True)
class Emit:
    """The constant part of the span and log record of every event sharing a plan, and how to add
    each event's own fields (``fields``)."""

    kind: str
    level: str
    span_head: bytes
    span_attributes: bytes
    span_status: bytes
    log_head: bytes
    #: Log line fields (``None`` already left out).
    log_fields: Attrs
    fields: FieldMap


def constant_values(event: Event, fields: FieldMap, **derived: Any) -> Attrs:
    """The values a plan's constant fields name: the event's, or the derived ones given."""
    return {
        f.value: derived[f.value] if f.value in derived else getattr(event, f.value) for f in fields.constant
    }


def new_emit(event: Event, name: str, kind: int, error: str | None, fields: FieldMap, values: Attrs) -> Emit:
    kind_name = KIND_OF[type(event)]
    severity = otlp.SEVERITY_ERROR if error else otlp.SEVERITY_INFO
    return Emit(
        kind=kind_name,
        level="error" if error else "info",
        span_head=otlp.span_head(name, kind),
        span_attributes=otlp.span_attributes(fields.constant_span(values)),
        span_status=otlp.span_status(error),
        log_head=otlp.log_head(
            severity, f"otel_service.{kind_name}", {"kind": kind_name, "business_id": event.business_id}
        ),
        log_fields=fields.constant_log(values),
        fields=fields,
    )
