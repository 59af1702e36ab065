"""OTLP protobuf for spans and log records, written straight to wire format from envelopes.

The events describe calls that already happened elsewhere, with IDs fixed at intake, so spans are
written as finished records: backdated, parented to the app's span, identical on replay. Encoding by
hand (field tags below, from opentelemetry-proto) costs a fraction of building message objects; the
tests decode the output with the generated protobuf classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

__all__ = [
    "KIND_CLIENT",
    "KIND_INTERNAL",
    "SEVERITY_ERROR",
    "SEVERITY_INFO",
    "Value",
    "key_values",
    "log_head",
    "log_record",
    "logs_request",
    "resource",
    "scope",
    "span",
    "span_attributes",
    "span_head",
    "span_status",
    "traces_request",
]

Value = str | bool | int | float
SEVERITY_INFO = 9
SEVERITY_ERROR = 17
KIND_INTERNAL = 1
KIND_CLIENT = 3
_STATUS_ERROR = 2
_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")
_SMALL = [bytes((n,)) for n in range(128)]
_INT64_MASK = 0xFFFFFFFFFFFFFFFF


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _any(value: Value) -> bytes:
    """An AnyValue message body."""
    if isinstance(value, str):
        return _len(b"\x0a", value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    return b"\x21" + _DOUBLE.pack(value)


_KEY_CACHE: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    cached = _KEY_CACHE.get(key)
    if cached is None:
        cached = _len(b"\x0a", key.encode())
        if len(_KEY_CACHE) < 4096:
            _KEY_CACHE[key] = cached
    return cached


def key_values(attributes: Mapping[str, Value | None], tag: bytes) -> bytes:
    """Repeated KeyValue fields with field tag ``tag``; ``None`` values are skipped."""
    out: list[bytes] = []
    append = out.append
    small = _SMALL
    keys = _KEY_CACHE
    for key, value in attributes.items():
        if value is None:
            continue
        key_field = keys.get(key) or _key(key)
        kind = type(value)
        # The common cases, when every length prefix fits one byte: KeyValue{key, AnyValue{value}}.
        if kind is str:
            raw = value.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
            n = len(raw)
            size = len(key_field) + n + 4
            if size < 128:
                append(b"".join((tag, small[size], key_field, b"\x12", small[n + 2], b"\x0a", small[n], raw)))
                continue
        elif kind is int:
            raw = _varint(value & _INT64_MASK)  # type: ignore[operator]
            n = len(raw)
            size = len(key_field) + n + 3
            if size < 128:
                append(b"".join((tag, small[size], key_field, b"\x12", small[n + 1], b"\x18", raw)))
                continue
        elif kind is float:
            size = len(key_field) + 11
            if size < 128:
                append(b"".join((tag, small[size], key_field, b"\x12\x09\x21", _DOUBLE.pack(value))))
                continue
        append(_len(tag, key_field + _len(b"\x12", _any(value))))
    return b"".join(out)


def resource(attributes: Mapping[str, Value]) -> bytes:
    """A Resource message body."""
    return key_values(attributes, b"\x0a")


def scope(name: str, version: str) -> bytes:
    """An InstrumentationScope message body."""
    return _len(b"\x0a", name.encode()) + _len(b"\x12", version.encode())


def span_head(name: str, kind: int) -> bytes:
    """A Span's name and kind fields."""
    return _len(b"\x2a", name.encode()) + b"\x30" + _varint(kind)


def span_attributes(attributes: Mapping[str, Value | None]) -> bytes:
    """Span attribute fields, to pass on to ``span`` (e.g. encoded once for many spans)."""
    return key_values(attributes, b"\x4a")


def span_status(error: str | None) -> bytes:
    """A Span's status field: error with ``error`` as message, or nothing (unset)."""
    if not error:
        return b""
    return _len(b"\x7a", _len(b"\x12", error.encode()) + b"\x18" + _varint(_STATUS_ERROR))


# flags (field 16, fixed32): the W3C trace flags (sampled: bit 0), and "is the parent remote" known
# (bit 8): it is remote when the app sent one (bit 9). Indexed by (has a parent, sampled).
_SPAN_FLAGS = {
    (parent, sampled): b"\x85\x01" + _FIXED32.pack(0x100 | (0x200 if parent else 0) | (1 if sampled else 0))
    for parent in (False, True)
    for sampled in (False, True)
}
# LogRecord flags (field 8, fixed32): the W3C trace flags.
_LOG_FLAGS = {True: b"\x45\x01\x00\x00\x00", False: b"\x45\x00\x00\x00\x00"}


def span(
    *,
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    head: bytes,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Value | None],
    encoded_attributes: bytes = b"",
    status: bytes = b"",
    sampled: bool = True,
    tracestate: str | None = None,
) -> bytes:
    """A Span message body from its parts; ``head``, ``encoded_attributes`` and ``status`` come from
    ``span_head``, ``span_attributes`` and ``span_status``; ``sampled`` and ``tracestate`` are the
    parent's (W3C trace context), carried on."""
    return b"".join(
        (
            b"\x0a\x10",
            bytes.fromhex(trace_id),
            b"\x12\x08",
            bytes.fromhex(span_id),
            _len(b"\x1a", tracestate.encode()) if tracestate else b"",
            b"\x22\x08" + bytes.fromhex(parent_span_id) if parent_span_id else b"",
            head,
            b"\x39",
            _FIXED64.pack(start_ns),
            b"\x41",
            _FIXED64.pack(end_ns),
            encoded_attributes,
            key_values(attributes, b"\x4a"),
            status,
            _SPAN_FLAGS[parent_span_id is not None, sampled],
        )
    )


def log_head(severity: int, event_name: str, attributes: Mapping[str, Value | None]) -> bytes:
    """A LogRecord's severity, event name and (constant) attribute fields, to pass to ``log_record``."""
    return b"".join(
        (
            b"\x10" + _varint(severity),
            b"\x1a\x05ERROR" if severity >= SEVERITY_ERROR else b"\x1a\x04INFO",
            key_values(attributes, b"\x32"),
            _len(b"\x62", event_name.encode()),
        )
    )


def log_record(
    *,
    trace_id: str,
    span_id: str,
    time_ns: int,
    observed_ns: int,
    head: bytes,
    body: bytes,
    attributes: Mapping[str, Value | None],
    sampled: bool = True,
) -> bytes:
    """A LogRecord message body; ``head`` comes from ``log_head``, ``body`` is the UTF-8 log line;
    ``sampled``: the trace flags of the span it belongs to."""
    return b"".join(
        (
            b"\x09",
            _FIXED64.pack(time_ns),
            head,
            _len(b"\x2a", _len(b"\x0a", body)),
            key_values(attributes, b"\x32"),
            _LOG_FLAGS[sampled],
            b"\x4a\x10",
            bytes.fromhex(trace_id),
            b"\x52\x08",
            bytes.fromhex(span_id),
            b"\x59",
            _FIXED64.pack(observed_ns),
        )
    )


def _request(resource_body: bytes, scope_body: bytes, items: Iterable[bytes]) -> bytes:
    # ExportXServiceRequest{ResourceX(1){resource(1), ScopeX(2){scope(1), items(2)}}}
    inner = _len(b"\x0a", scope_body) + b"".join(_len(b"\x12", item) for item in items)
    resource_x = _len(b"\x0a", resource_body) + _len(b"\x12", inner)
    return _len(b"\x0a", resource_x)


def traces_request(resource_body: bytes, scope_body: bytes, spans: Iterable[bytes]) -> bytes:
    """A serialized ExportTraceServiceRequest."""
    return _request(resource_body, scope_body, spans)


def logs_request(resource_body: bytes, scope_body: bytes, records: Iterable[bytes]) -> bytes:
    """A serialized ExportLogsServiceRequest."""
    return _request(resource_body, scope_body, records)
