"""structlog set-up: one JSON line per event on stdout, rendered once and reused as the OTLP body."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import IO, Any

import orjson
import structlog

__all__ = ["EventLogger", "create_event_logger"]


class _LineSink:
    """The structlog "logger": writes each rendered line and returns it to the caller."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self._stream = stream

    def msg(self, line: bytes) -> bytes:
        if self._stream is not None:
            self._stream.write(line + b"\n")
        return line

    info = error = warning = msg

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()


def _render(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return orjson.dumps(event_dict)


class EventLogger:
    """Renders event records with structlog; ``stream=None`` renders without writing."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self._sink = _LineSink(stream)
        self._logger = structlog.wrap_logger(
            self._sink,
            processors=[structlog.processors.add_log_level, _render],
            cache_logger_on_first_use=True,
        )

    def log(self, level: str, event: str, fields: dict[str, Any]) -> bytes:
        """Write one record; ``fields`` must not use the reserved keys ``event`` and ``level``."""
        method = self._logger.error if level == "error" else self._logger.info
        line: bytes = method(event, **fields)
        return line

    def flush(self) -> None:
        self._sink.flush()


def create_event_logger(stream: IO[bytes] | None) -> EventLogger:
    return EventLogger(stream)
