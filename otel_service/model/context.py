"""Trace context and correlation IDs: W3C ``traceparent`` parsing and the ID resolution order."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

__all__ = [
    "TraceContext",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "resolve_correlation_id",
]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEADER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The parent a span joins: the app's trace and span, as lowercase hex."""

    trace_id: str
    span_id: str
    sampled: bool = True


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context in a W3C ``traceparent`` header, or ``None`` if absent or malformed.

    A malformed header is ignored (a new trace starts), never an error.
    """
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None
    return TraceContext(trace_id, span_id, sampled=bool(int(flags, 16) & 1))


def resolve_correlation_id(
    event_value: str | None, header_value: str | None, parent: TraceContext | None, fallback: str
) -> str:
    """The correlation ID, in DESIGN.md's order: event field, header, traceparent, new."""
    if event_value:
        return event_value
    if header_value and _HEADER_ID.fullmatch(header_value):
        return header_value
    if parent is not None:
        return parent.trace_id
    return fallback


#: IDs come from a PRNG seeded from the OS, like the OpenTelemetry SDK's ``RandomIdGenerator``: unique
#: and unpredictable enough for tracing, without a system call per ID.
_random = random.Random(os.urandom(32))  # noqa: S311 -- trace IDs are not secrets
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_trace_id() -> str:
    """A random, non-zero 128-bit trace ID as hex."""
    value = _random.getrandbits(128)
    return f"{value:032x}" if value else new_trace_id()


def new_span_id() -> str:
    """A random, non-zero 64-bit span ID as hex."""
    value = _random.getrandbits(64)
    return f"{value:016x}" if value else new_span_id()
