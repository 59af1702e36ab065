"""structlog, twice: the event log (one JSON line per event on stdout, rendered once and reused as the
OTLP body) and the service's own diagnostics (one JSON line per problem on stderr).

Diagnostics have a stable ``event`` name an operator can grep (``cannot_listen``,
``intake_process_exited``, ``metric_export_failed``...), the process role, a level and a UTC time;
tracebacks are structured (``exception``), never raw text. Libraries' standard-library loggers (the
OpenTelemetry SDK, aiohttp) go through the same renderer with ``event`` = ``library_log``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import orjson
import structlog
import structlog.tracebacks

__all__ = ["EventLogger", "configure_diagnostics", "create_event_logger", "diagnostics"]


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


class _RecordLogger(structlog.BoundLoggerBase):
    """A structlog wrapper class that takes the event's fields as one dict.

    ``log.info(event, **fields)`` copies the keyword arguments three times on the way to the processor
    chain (a few µs for an event's 25 fields); this goes to ``_process_event`` directly, the hook
    structlog provides for custom wrapper classes.
    """

    def record(self, level: str, event: str, fields: dict[str, Any]) -> bytes:
        args, kwargs = self._process_event(level, event, fields)
        line: bytes = getattr(self._logger, level)(*args, **kwargs)
        return line


class EventLogger:
    """Renders event records with structlog; ``stream=None`` renders without writing."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self._sink = _LineSink(stream)
        self._logger: _RecordLogger = structlog.wrap_logger(
            self._sink,
            processors=[structlog.processors.add_log_level, _render],
            wrapper_class=_RecordLogger,
        ).bind()

    def log(self, level: str, event: str, fields: dict[str, Any]) -> bytes:
        """Write one record at ``level`` ("info" or "error"); ``fields`` must not use the reserved
        keys ``event`` and ``level``."""
        return self._logger.record(level, event, fields)

    def flush(self) -> None:
        self._sink.flush()


def create_event_logger(stream: IO[bytes] | None) -> EventLogger:
    return EventLogger(stream)


def _foreign(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A standard-library record: its text becomes ``message``, under the stable event ``library_log``."""
    event_dict["message"] = event_dict.pop("event", "")
    event_dict["event"] = "library_log"
    return event_dict


def _json(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


#: Loggers whose failures the service reports itself (``metric_export_failed``/``_recovered``).
_QUIETED = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)


def configure_diagnostics(level: str, process: str, stream: IO[str] | None = None) -> None:
    """Send this process's diagnostics (``diagnostics()`` and every standard-library logger) to
    ``stream`` (stderr) as JSON lines at ``level`` and above, each tagged with ``process``."""
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        lambda _, __, event_dict: {**event_dict, "process": process},
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _foreign],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Frames without their locals: a traceback must not carry a token or an event's data.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _json,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # The metric reader says once per outage what the OTLP metric exporters would say on every push.
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def diagnostics(name: str = "otel_service") -> Any:
    """The logger of the service's own diagnostics: ``diagnostics().warning("event_name", key=value)``."""
    return structlog.stdlib.get_logger(name)
