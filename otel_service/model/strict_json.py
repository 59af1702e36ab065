"""Strict JSON: every value the standard library's decoder would return, and nothing it would let
pass that JSON or this service refuses (duplicate keys, NaN and Infinity, lone surrogates, trailing
data, over-deep nesting, numbers too large); errors name where (``$``, ``$[2]``, ``$.a.b``)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec

from .errors import InvalidEvent
from .json_paths import DEPTH, locate, member

__all__ = ["decode", "decode_utf8", "fast_decode"]

_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
_SURROGATE_TOKEN = re.compile(r"\\[uU][dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def _constant(name: str) -> float:
    raise _NonFinite(name)


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFinite(text)
    return value


class _Duplicate(ValueError):
    pass


class _NonFinite(ValueError):
    pass


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
_FAST_DECODER = msgspec.json.Decoder()


def fast_decode(raw: bytes) -> Any:
    """The JSON value of ``raw`` decoded by msgspec, or ``None`` unless it is certainly the value the
    reference decoder returns without error.

    msgspec refuses NaN/Infinity, out-of-range numbers, invalid UTF-8 and trailing data, but keeps the
    last of duplicate keys silently. Without backslashes (so no escapes: no surrogates or control
    characters hiding in strings either), every string token is two quote characters, so the body
    has as many string tokens as the decoded value has keys plus string values exactly when no key
    was repeated. Raw control characters are invalid JSON; with DEL refused here too, no string of
    the value holds a control character (``_check_text`` has nothing to find).
    """
    if raw.find(b"\\") >= 0 or raw.find(b"\x7f") >= 0:  # (find: twice as fast as "in" here)
        return None
    try:
        value = _FAST_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # invalid UTF-8 in a string
        return None
    strings = 1 if type(value) is str else 0
    stack = [value] if type(value) is dict or type(value) is list else []
    while stack:
        node = stack.pop()
        if type(node) is dict:
            strings += len(node)
            node = list(node.values())
        types = list(map(type, node))
        strings += types.count(str)
        if dict in types or list in types:
            stack.extend(item for item in node if type(item) is dict or type(item) is list)
    return value if 2 * strings == raw.count(b'"') else None


class _Pairs(list[tuple[str, Any]]):
    """An object's key/value pairs as written (to find where a duplicate key is)."""


_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_constant, parse_float=_float)


def _duplicate_path(text: str, where: str) -> str:
    """Where the repeated key the reference decoder refused is: the first in the first object, in
    document order, to end with one (objects end after the objects they hold). Raises what decoding
    raises when the text is not valid JSON beyond the duplicate (it is then refused for that)."""
    tree = _PAIRS_DECODER.raw_decode(text, _WHITESPACE.match(text).end())[0]  # type: ignore[union-attr]
    stack: list[tuple[Any, str, bool]] = [(tree, where, False)]
    while stack:
        node, path, ended = stack.pop()
        if isinstance(node, _Pairs):
            if ended:
                seen: set[str] = set()
                for key, _ in node:
                    if key in seen:
                        return path + member(key)
                    seen.add(key)
                continue
            stack.append((node, path, True))
            stack.extend((value, path + member(key), False) for key, value in reversed(node))
        elif isinstance(node, list):
            stack.extend((node[i], f"{path}[{i}]", False) for i in range(len(node) - 1, -1, -1))
    return where


_CHECKED = json.JSONDecoder(parse_constant=_constant, parse_float=_float)  # repeated keys aside


def _skip(text: str, start: int) -> int | None:
    """Where the value at ``start`` ends if the reference decoder reads it (repeated keys aside)."""
    try:
        return _CHECKED.raw_decode(text, start)[1]
    except (ValueError, RecursionError):
        return None


def _skip_paired(text: str, start: int) -> int | None:
    """``_skip``, for a value that escapes no surrogate either (pairs aside: they are rare)."""
    end = _skip(text, start)
    return None if end is None or _SURROGATE_TOKEN.search(text, start, end) else end


def _refused_number(token: str) -> bool:
    """Whether the reference decoder refuses this number token (NaN, Infinity, 1e999, 5,000 digits)."""
    if token[-1] in "Ny":  # NaN, Infinity, -Infinity
        return True
    try:
        _float(token) if "." in token or "e" in token or "E" in token else int(token)
    except ValueError:
        return True
    return False


def _lone_surrogate(token: str) -> bool:
    """Whether this string token (as written) escapes a surrogate that is not part of a pair."""
    if not _SURROGATE_TOKEN.search(token):
        return False
    try:  # a pair decodes to one character beyond the BMP; a lone escape stays a surrogate
        return _SURROGATE.search(json.loads(token)) is not None
    except ValueError:
        return False


def _refusal(error: Exception, text: str, where: str) -> InvalidEvent:
    """Why the reference decoder refused a document, as the error the client gets, naming the value
    refused (see ``json_paths.locate``): the number, the value being read at a syntax error, or the
    value ``DEPTH`` levels down where nesting goes too deep (the path of the deepest point could be
    thousands of characters long; no event comes near that depth)."""
    if isinstance(error, RecursionError):
        field = locate(text, where, depth=DEPTH, skip=_skip)
        below = f" (the nesting goes on below the field, {DEPTH} levels down)" if field != where else ""
        return InvalidEvent(f"JSON nested too deeply{below}", field=field, reason="too_deep")
    if isinstance(error, json.JSONDecodeError):
        return InvalidEvent(
            f"malformed JSON: {error.msg} at position {error.pos}",
            field=locate(text, where, until=error.pos, skip=_skip),
            reason="malformed_json",
        )
    field = locate(text, where, bad_number=_refused_number, skip=_skip)
    if isinstance(error, _NonFinite):
        return InvalidEvent(
            f"non-finite number {error.args[0]!r} is not allowed", field=field, reason="invalid_number"
        )
    # e.g. an integer literal beyond Python's digit limit
    return InvalidEvent("number too large", field=field, reason="invalid_number")


def decode(text: str, raw: bytes, where: str) -> Any:
    """The JSON value of ``text`` (``raw``: its bytes), or ``InvalidEvent`` saying what is wrong where."""
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    try:
        value, end = _DECODER.raw_decode(text, start)
    except _Duplicate as exc:
        try:  # a duplicate key is reported where it is, unless the rest is not JSON at all
            path = _duplicate_path(text, where)
        except (ValueError, RecursionError) as invalid:
            raise _refusal(invalid, text, where) from None
        raise InvalidEvent(f"duplicate key {exc.args[0]!r}", field=path, reason="duplicate_key") from None
    except (ValueError, RecursionError) as invalid:  # JSONDecodeError and _NonFinite are ValueErrors
        raise _refusal(invalid, text, where) from None
    if text[end:].strip():
        position = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        raise InvalidEvent(
            f"trailing data after the JSON value at position {position}", field=where, reason="malformed_json"
        )
    if _SURROGATE_ESCAPE.search(raw):
        # Escaped surrogates must form valid pairs; msgspec's decoder refuses lone ones.
        try:
            msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise InvalidEvent(
                "string contains a lone surrogate escape",
                field=locate(text, where, bad_string=_lone_surrogate, skip=_skip_paired),
                reason="invalid_string",
            ) from None
    return value


def decode_utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"body is not valid UTF-8 (byte {exc.start})", field="$", reason="invalid_encoding"
        ) from None
