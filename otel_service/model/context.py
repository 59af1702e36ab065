"""Trace context and correlation IDs: W3C ``traceparent``/``tracestate`` parsing and the ID resolution
order, applied once per request (``RequestContext``)."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

__all__ = [
    "RequestContext",
    "TraceContext",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "parse_tracestate",
    "resolve_correlation_id",
]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEADER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: W3C trace context: vendors may drop a ``tracestate`` over 512 characters; printable ASCII only.
_TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The parent a span joins: the app's trace and span, as lowercase hex, with its sampled flag and
    ``tracestate``, which the span carries on."""

    trace_id: str
    span_id: str
    sampled: bool = True
    tracestate: str | None = None


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


def parse_tracestate(value: str | None) -> str | None:
    """A W3C ``tracestate`` header to carry on as is, or ``None`` if absent, blank, longer than 512
    characters or not printable ASCII (ignored, like a malformed ``traceparent``)."""
    if value is None:
        return None
    value = value.strip(" \t")
    return value if _TRACESTATE.fullmatch(value) else None


def resolve_correlation_id(
    event_value: str | None, header_value: str | None, parent: TraceContext | None, fallback: str
) -> str:
    """The correlation ID, in the README's order: event field, header, traceparent, new (``fallback``)."""
    return RequestContext(_header_id(header_value), parent, fallback).event_correlation_id(
        event_value, parent
    )


def _header_id(value: str | None) -> str | None:
    """An ``X-Correlation-ID`` / ``X-Request-ID`` value if it is one we echo (bounded, no control or
    separator characters), else ``None``."""
    return value if value and _HEADER_ID.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a request says about correlation, resolved once when it arrives.

    ``header_id``: a valid ``X-Correlation-ID`` (else ``X-Request-ID``) header; ``parent``: a valid
    ``traceparent`` (with its ``tracestate``); ``trace_id``: the trace that the request's events without
    a trace context of their own join (the parent's, else a new one).
    """

    header_id: str | None
    parent: TraceContext | None
    trace_id: str

    @classmethod
    def from_headers(
        cls,
        correlation_header: str | None,
        traceparent: str | None,
        tracestate: str | None,
    ) -> RequestContext:
        parent = parse_traceparent(traceparent)
        if parent is not None:
            state = parse_tracestate(tracestate)
            if state is not None:
                parent = TraceContext(parent.trace_id, parent.span_id, parent.sampled, state)
        return cls(
            _header_id(correlation_header), parent, new_trace_id() if parent is None else parent.trace_id
        )

    @property
    def correlation_id(self) -> str:
        """The request's own correlation ID (the answer's ``X-Correlation-ID`` for a batch): the
        header, else the trace its events share."""
        return self.header_id or self.trace_id

    def parent_of(self, trace_id: str | None, span_id: str | None) -> TraceContext | None:
        """The parent of an event that carries ``trace_id``/``span_id`` (both or neither): its own, else
        the request's."""
        if trace_id is not None and span_id is not None:
            return TraceContext(trace_id, span_id)
        return self.parent

    def event_correlation_id(self, own: str | None, parent: TraceContext | None) -> str:
        """An event's correlation ID: its own field, the header, its parent's trace, the request's trace
        (the rule; the header was checked once, in ``from_headers``)."""
        return own or self.header_id or (self.trace_id if parent is None else parent.trace_id)


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
