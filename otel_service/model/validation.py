"""Strict parsing of request bodies into events, before anything reaches the SDK.

The reference path decodes with ``strict_json.decode`` (which refuses duplicate keys, NaN and Infinity,
and says where), then ``msgspec.convert`` in strict mode against the event model (types, bounds,
patterns). Bodies that are entirely valid usually take a faster route to the same events: see
``_fast_items``; anything it does not accept goes the reference way, which writes the errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from .errors import InvalidEvent
from .events import EVENT_TYPES, TYPE_OF_KIND, Event, Feedback, LabTrack, LlmCall, text_fields
from .strict_json import decode as _decode
from .strict_json import decode_utf8 as _text
from .strict_json import fast_decode as _fast_decode

__all__ = ["Limits", "ParsedItem", "event_seconds", "event_time", "parse_batch", "parse_track"]

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_KEY_PATH = re.compile(r" - at `key` in `\$(?P<path>[^`]*)`$")
_TEXT_FIELDS = {t: text_fields(t) for t in (*EVENT_TYPES, LabTrack)}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may carry."""

    max_items: int = 1000
    max_past_seconds: float = 86_400.0
    max_future_seconds: float = 300.0


@dataclass(slots=True)
class ParsedItem:
    """One item of a batch: its index and either the event or why it was refused."""

    index: int
    event: Event | None = None
    error: InvalidEvent | None = None


def _convert(obj: Any, model: type[Any] | Any, prefix: str) -> Any:
    try:
        return msgspec.convert(obj, model, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), prefix) from None


def _invalid(message: str, prefix: str) -> InvalidEvent:
    match = _KEY_PATH.search(message)
    if match:
        return InvalidEvent(
            "invalid key: " + message[: match.start()], field=prefix + match["path"], reason="invalid_field"
        )
    match = _PATH.search(message)
    if match:
        return InvalidEvent(message[: match.start()], field=prefix + match["path"], reason="invalid_field")
    if m := _UNKNOWN.search(message):
        return InvalidEvent(message, field=f"{prefix}.{m['name']}", reason="unknown_field")
    if m := _MISSING.search(message):
        return InvalidEvent(message, field=f"{prefix}.{m['name']}", reason="missing_field")
    return InvalidEvent(message, field=prefix, reason="invalid_field")


def event_time(event: Event | LabTrack, now: float, limits: Limits, where: str) -> float:
    """The event's time as Unix seconds (``now`` when absent), refusing implausible values."""
    stamp = event.timestamp
    if stamp is None:
        return now
    if isinstance(stamp, datetime) and stamp.tzinfo is None:
        raise InvalidEvent(
            "timestamp needs a time zone (e.g. Z)", field=f"{where}.timestamp", reason="invalid_field"
        )
    seconds = event_seconds(event, now)
    if not now - limits.max_past_seconds <= seconds <= now + limits.max_future_seconds:
        raise InvalidEvent(
            f"timestamp is outside the accepted window (-{limits.max_past_seconds:.0f} s, "
            f"+{limits.max_future_seconds:.0f} s around now)",
            field=f"{where}.timestamp",
            reason="timestamp_out_of_range",
        )
    return seconds


def event_seconds(event: Event | LabTrack, now: float) -> float:
    """The event's time as Unix seconds, ``now`` when absent; unchecked (``event_time`` checks)."""
    stamp = event.timestamp
    if stamp is None:
        return now
    return stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)


def _check_text(obj: Event | LabTrack, where: str) -> None:
    """Identifiers and labels must not hold control characters (the ``Ident`` and ``Label`` types)."""
    for name in _TEXT_FIELDS[type(obj)]:
        value = getattr(obj, name)
        if value is not None and _CONTROL.search(value):
            raise InvalidEvent(
                "control characters are not allowed", field=f"{where}.{name}", reason="invalid_field"
            )


def _check_event(event: Event, now: float, limits: Limits, where: str) -> Event:
    event_time(event, now, limits, where)
    if not isinstance(event, Feedback) and event.success and event.error_type is not None:
        raise InvalidEvent(
            "error_type is only allowed when success is false",
            field=f"{where}.error_type",
            reason="invalid_field",
        )
    if (event.span_id is None) != (event.trace_id is None):
        missing = "span_id" if event.span_id is None else "trace_id"
        raise InvalidEvent(
            "trace_id and span_id go together", field=f"{where}.{missing}", reason="invalid_field"
        )
    return event


def parse_track(body: bytes, now: float, limits: Limits) -> LlmCall:
    """Parse the lab's ``POST /track`` body into an LLM call, or raise ``InvalidEvent``."""
    obj = _fast_decode(body)
    if type(obj) is dict:
        try:
            fast: LabTrack = msgspec.convert(obj, LabTrack, strict=True)
            event_time(fast, now, limits, "$")
            return fast.to_llm_call()
        except (msgspec.ValidationError, InvalidEvent):
            pass  # the reference path words the error
    obj = _decode(_text(body), body, "$")
    if not isinstance(obj, dict):
        raise InvalidEvent("expected a JSON object", field="$", reason="invalid_field")
    track: LabTrack = _convert(obj, LabTrack, "$")
    _check_text(track, "$")
    event_time(track, now, limits, "$")
    return track.to_llm_call()


def _items(body: bytes, ndjson: bool, limits: Limits) -> Iterator[tuple[int, str, Any, InvalidEvent | None]]:
    text = _text(body)
    if ndjson:
        # Split on \n only: U+2028 and friends are legal inside JSON strings.
        lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
        if not lines:
            raise InvalidEvent("empty batch: no NDJSON line holds an event", field="$", reason="empty_batch")
        if len(lines) > limits.max_items:
            raise InvalidEvent(
                f"{len(lines)} items exceed the limit of {limits.max_items}",
                field="$",
                reason="too_many_items",
            )
        for index, line in enumerate(lines):
            where = f"$[{index}]"
            try:
                yield index, where, _decode(line, line.encode(), where), None
            except InvalidEvent as exc:
                yield index, where, None, exc
        return
    obj = _decode(text, body, "$")
    if isinstance(obj, list):
        if len(obj) > limits.max_items:
            raise InvalidEvent(
                f"{len(obj)} items exceed the limit of {limits.max_items}",
                field="$",
                reason="too_many_items",
            )
        if not obj:
            raise InvalidEvent("empty batch", field="$", reason="empty_batch")
        for index, item in enumerate(obj):
            yield index, f"$[{index}]", item, None
    else:
        yield 0, "$", obj, None


def _fast_items(body: bytes, ndjson: bool, now: float, limits: Limits) -> list[ParsedItem] | None:
    """Every item's event when the whole body is valid and ``_fast_decode`` vouches for its JSON, else
    ``None`` (the reference path then judges the body, and words the errors)."""
    if ndjson:
        values = []
        for line in body.split(b"\n"):
            if line.strip():
                value = _fast_decode(line)
                if value is None:
                    return None
                values.append(value)
    else:
        value = _fast_decode(body)
        if value is None:
            return None
        values = value if type(value) is list else [value]
    if not values or len(values) > limits.max_items:
        return None
    parsed: list[ParsedItem] = []
    for index, obj in enumerate(values):
        kind = obj.get("kind") if type(obj) is dict else None
        model = TYPE_OF_KIND.get(kind) if type(kind) is str else None
        if model is None:
            return None
        try:
            event: Event = msgspec.convert(obj, model, strict=True)
            parsed.append(ParsedItem(index, event=_check_event(event, now, limits, "$")))
        except (msgspec.ValidationError, InvalidEvent):
            return None
    return parsed


def parse_batch(body: bytes, *, ndjson: bool, now: float, limits: Limits) -> list[ParsedItem]:
    """Parse ``POST /v1/events``: one event, an array, or NDJSON; each item judged on its own.

    Raises ``InvalidEvent`` only when the body as a whole is unusable.
    """
    fast = _fast_items(body, ndjson, now, limits)
    if fast is not None:
        return fast
    parsed: list[ParsedItem] = []
    for index, where, obj, error in _items(body, ndjson, limits):
        if error is not None:
            parsed.append(ParsedItem(index, error=error))
            continue
        try:
            if not isinstance(obj, dict):
                raise InvalidEvent("expected a JSON object", field=where, reason="invalid_field")
            kind = obj.get("kind")
            model = TYPE_OF_KIND.get(kind) if isinstance(kind, str) else None
            if model is None:
                reason = "missing_field" if kind is None else "invalid_field"
                raise InvalidEvent(
                    f"kind must be one of {sorted(TYPE_OF_KIND)}, got {kind!r}",
                    field=f"{where}.kind",
                    reason=reason,
                )
            event: Event = _convert(obj, model, where)
            _check_text(event, where)
            parsed.append(ParsedItem(index, event=_check_event(event, now, limits, where)))
        except InvalidEvent as exc:
            parsed.append(ParsedItem(index, error=exc))
    return parsed
