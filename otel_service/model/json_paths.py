"""Where in a JSON document a refused value is, as a path (``$``, ``$[2]``, ``$.a.b``).

Only for bodies already refused: ``locate`` re-reads the text with a small tokenizer that keeps the
path of the value it is in, and stops at the first place a condition holds. Containers one to
``SKIP_LEVELS`` levels down that the caller's ``skip`` reads without fault (in C, with the reference
decoder) are stepped over whole, so a big batch costs one item's tokens. Work is bounded: no
recursion, at most ``TOKEN_BUDGET`` tokens and ``SKIP_LEVELS + 1`` decodes of the text; when it finds
nothing, the path is ``where`` (the whole document's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

__all__ = ["DEPTH", "SKIP_LEVELS", "TOKEN_BUDGET", "locate", "member"]

#: Nesting too deep is reported at the value this many levels down (no event comes near).
DEPTH = 32
#: Containers this many levels down or fewer may be stepped over whole (see ``skip``).
SKIP_LEVELS = 1
#: Tokens read at most (some 30 ms); past them the path is the whole document's.
TOKEN_BUDGET = 50_000

_TOKEN = re.compile(
    r"""[ \t\n\r]*(?:
    (,)|(:)
    |("[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*")  # a string
    |(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|-?Infinity)  # a number
    |(true|false|null)
    |(\{)|(\[)|(\})|(\])
    )""",
    re.VERBOSE,
)
# Tokens (the group that matched), and what the tokenizer expects next.
_COMMA, _COLON, _STRING, _NUMBER, _CONSTANT, _OBJECT, _ARRAY, _OBJECT_END, _ARRAY_END = range(1, 10)
_VALUE, _FIRST, _KEY, _AFTER_KEY, _NEXT, _END = range(6)


def locate(
    text: str,
    where: str,
    *,
    until: int | None = None,
    depth: int | None = None,
    bad_string: Callable[[str], bool] | None = None,
    bad_number: Callable[[str], bool] | None = None,
    skip: Callable[[str, int], int | None] | None = None,
) -> str:
    """The path of the value being read where the first of these holds, else ``where``:

    - ``until``: the text ends, or a token does not fit the grammar or reaches past ``until`` (the
      position of a syntax error);
    - ``depth``: a container opens ``depth`` levels down;
    - ``bad_string``, ``bad_number``: they hold for a string or number token, as written (``NaN``
      and ``Infinity`` are number tokens).

    ``skip(text, start)``: where the container at ``start`` ends if it holds none of that, else
    ``None``. The path is the value's (``$.a`` once ``{"a":`` is read); between the members of a
    container, or at a key, the container's (a bad key is reported at its object, as msgspec does).
    """
    end = len(text) if until is None else until
    # For each open container: its member being read, as the key's token (objects) or the index.
    keys: list[str] = []
    counts: list[int] = []  # -1 for objects
    state = _VALUE
    position = 0
    for _ in range(TOKEN_BUDGET):
        match = _TOKEN.match(text, position)
        if match is None or match.end() > end:
            break  # the syntax error (or the end of the text)
        position = match.end()
        kind = match.lastindex or 0
        if kind == _COMMA:
            if state != _NEXT:
                break
            if counts[-1] < 0:
                state = _KEY
            else:
                counts[-1] += 1
                state = _VALUE
        elif kind == _COLON:
            if state != _AFTER_KEY:
                break
            state = _VALUE
        elif kind <= _CONSTANT:
            if state == _KEY and kind == _STRING:
                keys[-1] = match[kind]
                if bad_string is not None and bad_string(keys[-1]):
                    return _path(where, keys, counts, len(keys) - 1)
                state = _AFTER_KEY
                continue
            if state != _VALUE and state != _FIRST:
                break
            check = bad_string if kind == _STRING else bad_number if kind == _NUMBER else None
            if check is not None and check(match[kind]):
                return _path(where, keys, counts, len(keys))
            state = _NEXT if keys else _END
        elif kind <= _ARRAY:
            if state != _VALUE and state != _FIRST:
                break
            if depth is not None and len(keys) >= depth:
                return _path(where, keys, counts, len(keys))
            if skip is not None and 0 < len(keys) <= SKIP_LEVELS:
                skipped = skip(text, position - 1)
                if skipped is not None and skipped <= end:
                    position = skipped
                    state = _NEXT
                    continue
            keys.append("")
            counts.append(0 if kind == _ARRAY else -1)
            state = _FIRST if kind == _ARRAY else _KEY
        else:
            if not counts or (counts[-1] < 0) != (kind == _OBJECT_END):
                break
            if state != _NEXT and state != (_KEY if kind == _OBJECT_END else _FIRST):
                break
            keys.pop()
            counts.pop()
            state = _NEXT if keys else _END
    else:
        return where  # out of budget
    if until is None or state == _END:
        return where  # nothing found
    if state in (_KEY, _NEXT):
        return _path(where, keys, counts, len(keys) - 1)  # between members: the container
    return _path(where, keys, counts, len(keys))


def _path(where: str, keys: list[str], counts: list[int], levels: int) -> str:
    """The path down ``levels`` of the open containers (``keys`` and ``counts`` as ``locate`` keeps them)."""
    parts = [where]
    for key, count in zip(keys[:levels], counts[:levels], strict=True):
        if count >= 0:
            parts.append(f"[{count}]")
        else:
            parts.append(member(json.loads(key)) if "\\" in key else "." + key[1:-1])
    return "".join(parts)


def member(key: str) -> str:
    """``key`` as a step of a path (``.key``); a lone surrogate stays escaped (``\\ud800``) so the
    path can be sent as UTF-8."""
    return "." + key.encode("utf-8", "backslashreplace").decode("utf-8")
