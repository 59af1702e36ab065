"""W3C traceparent parsing and the correlation ID resolution order."""

from __future__ import annotations

import pytest

from otel_service.model.context import (
    TraceContext,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    resolve_correlation_id,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(VALID, TraceContext(TRACE, SPAN, sampled=True), id="sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-00", TraceContext(TRACE, SPAN, sampled=False), id="not-sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-03", TraceContext(TRACE, SPAN, sampled=True), id="other-flag-bits"),
        pytest.param(f"00-{TRACE}-{SPAN}-02", TraceContext(TRACE, SPAN, sampled=False), id="bit-0-only"),
        pytest.param(f" {VALID}\t", TraceContext(TRACE, SPAN, sampled=True), id="surrounding-whitespace"),
        pytest.param(f"01-{TRACE}-{SPAN}-01", TraceContext(TRACE, SPAN, sampled=True), id="future-version"),
        pytest.param(
            f"cc-{TRACE}-{SPAN}-01-what-the-future-will-bring",
            TraceContext(TRACE, SPAN, sampled=True),
            id="future-version-extra-fields",
        ),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", None, id="version-ff"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", None, id="zero-trace-id"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", None, id="zero-span-id"),
        pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", None, id="uppercase-trace-id"),
        pytest.param(f"00-{TRACE}-{SPAN.upper()}-01", None, id="uppercase-span-id"),
        pytest.param(f"0A-{TRACE}-{SPAN}-01", None, id="uppercase-version"),
        pytest.param(f"00-{TRACE}-{SPAN}-0B", None, id="uppercase-flags"),
        pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", None, id="trace-id-31"),
        pytest.param(f"00-{TRACE}0-{SPAN}-01", None, id="trace-id-33"),
        pytest.param(f"00-{TRACE}-{SPAN[:-1]}-01", None, id="span-id-15"),
        pytest.param(f"00-{TRACE}-{SPAN}0-01", None, id="span-id-17"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", None, id="flags-1-char"),
        pytest.param(f"0-{TRACE}-{SPAN}-01", None, id="version-1-char"),
        pytest.param(f"000-{TRACE}-{SPAN}-01", None, id="version-3-chars"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-extra", None, id="version-00-extra-field"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-", None, id="version-00-trailing-dash"),
        pytest.param(f"01-{TRACE}-{SPAN}-01extra", None, id="future-version-no-dash"),
        pytest.param(f"00_{TRACE}_{SPAN}_01", None, id="wrong-separator"),
        pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", None, id="non-hex"),
        pytest.param(f"00-{TRACE}-{SPAN}-0g", None, id="non-hex-flags"),
        pytest.param(f"01-{TRACE}-{SPAN}-01-" + "x" * 512, None, id="over-long"),
        pytest.param("garbage", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_traceparent(header: str | None, expected: TraceContext | None) -> None:
    """Valid headers yield the parent context; malformed or invalid ones are ignored (None)."""
    assert parse_traceparent(header) == expected


@pytest.mark.parametrize(
    ("event", "header", "parent", "expected"),
    [
        pytest.param("evt-1", "hdr-1", TraceContext(TRACE, SPAN), "evt-1", id="event-wins"),
        pytest.param(None, "hdr-1", TraceContext(TRACE, SPAN), "hdr-1", id="header-before-traceparent"),
        pytest.param("", "hdr-1", None, "hdr-1", id="empty-event-value"),
        pytest.param(None, None, TraceContext(TRACE, SPAN), TRACE, id="traceparent-trace-id"),
        pytest.param(None, "", TraceContext(TRACE, SPAN), TRACE, id="empty-header"),
        pytest.param(None, None, None, "fallback", id="fallback"),
        pytest.param(None, "req:2024.01_a-b", None, "req:2024.01_a-b", id="header-allowed-punctuation"),
        pytest.param(None, "x" * 128, None, "x" * 128, id="header-128-chars"),
        pytest.param(None, "x" * 129, TraceContext(TRACE, SPAN), TRACE, id="header-129-chars"),
        pytest.param(None, "has space", TraceContext(TRACE, SPAN), TRACE, id="header-space"),
        pytest.param(None, " lead", None, "fallback", id="header-leading-space"),
        pytest.param(None, "tab\there", None, "fallback", id="header-tab"),
        pytest.param(None, "nul\x00", None, "fallback", id="header-nul"),
        pytest.param(None, "esc\x1b[31m", None, "fallback", id="header-escape"),
        pytest.param(None, "line\nbreak", None, "fallback", id="header-inner-newline"),
        pytest.param(None, "trailing\n", None, "fallback", id="header-trailing-newline"),
        pytest.param(None, "caf\u00e9", None, "fallback", id="header-non-ascii"),
        pytest.param(None, "a/b", None, "fallback", id="header-slash"),
    ],
)
def test_resolve_correlation_id_order(
    event: str | None, header: str | None, parent: TraceContext | None, expected: str
) -> None:
    """Event field, then a well-formed header, then the traceparent's trace ID, then the fallback."""
    assert resolve_correlation_id(event, header, parent, "fallback") == expected


def test_new_ids_are_lowercase_hex_of_the_right_length_and_distinct() -> None:
    """Generated trace and span IDs have W3C shapes (so parse_traceparent accepts them) and differ."""
    traces = {new_trace_id() for _ in range(50)}
    spans = {new_span_id() for _ in range(50)}
    assert len(traces) == 50
    assert len(spans) == 50
    for trace_id, span_id in zip(sorted(traces), sorted(spans), strict=True):
        assert parse_traceparent(f"00-{trace_id}-{span_id}-01") == TraceContext(trace_id, span_id)
