"""Where the worker keeps each batch's events besides exporting them: an ``EventSink`` (the event
store, ``store.EventStore``, wired in ``runtime``; export never imports it).

``SinkFeed`` writes each batch right after it is recorded, in the worker's thread and its rhythm (one
write per batch), before the cursor can move past it: a crash replays the batch, and the sink, being
idempotent, keeps one row per event. A write that fails (a full disk, or anything else) never stops
export: its events are counted as dropped (``signal="store"``), once per event however often a replay
fails again, and reported once per episode (``store_write_failed``, then ``store_write_recovered``).
Retention is swept every ``SWEEP_SECONDS``, and at once again while a sweep leaves work to do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..spool.record import Envelope
from ..telemetry.logs import diagnostics
from .delivery import Observer
from .recorder import Derived

__all__ = ["SWEEP_SECONDS", "EventSink", "SinkFeed", "Sweep"]

#: How often retention is enforced when the previous sweep finished its work.
SWEEP_SECONDS = 5.0


class Sweep(Protocol):
    """What one retention sweep did (``store.Swept``)."""

    @property
    def expired(self) -> int: ...
    @property
    def evicted_for_size(self) -> int: ...
    @property
    def done(self) -> bool: ...


class EventSink(Protocol):
    """Keeps accepted events (``store.EventStore``)."""

    def write(self, envelopes: Sequence[Envelope], derived: Sequence[Derived | None]) -> int:
        """Keep one batch (all or nothing; an event kept already stays as it is); the events newly
        kept. Raises ``OSError`` when it cannot."""
        ...

    def sweep(self) -> Sweep:
        """Enforce retention, a bounded chunk at a time. Raises ``OSError`` when it cannot."""
        ...

    def close(self) -> None: ...


class SinkFeed:
    """Feeds an ``EventSink`` from the worker loop."""

    def __init__(self, sink: EventSink, observer: Observer, *, clock: Any = time.monotonic) -> None:
        self._sink = sink
        self._observer = observer
        self._clock = clock
        self._next_sweep = clock()
        self._write_failing = False
        self._dropped_in_episode = 0
        self._sweep_failing = False

    def write(self, envelopes: Sequence[Envelope], derived: Sequence[Derived | None], counted: int) -> None:
        """Keep a recorded batch; ``counted``: its leading envelopes whose counts the restored metric
        checkpoint holds (a failure is counted for the others only). The caller holds the metrics
        lock, so a failure's count goes into the same checkpoint as the batch's metrics."""
        try:
            self._sink.write(envelopes, derived)
        except Exception as exc:  # OSError as a rule; whatever it is, export goes on
            lost = len(envelopes) - counted
            if lost > 0:
                self._observer.dropped("store", "store_unwritable", lost)
                self._dropped_in_episode += lost
            if not self._write_failing:
                self._write_failing = True
                diagnostics().warning(
                    "store_write_failed",
                    error=str(exc) if isinstance(exc, OSError) else repr(exc),
                    action="export goes on; the events not stored are counted in "
                    'otel_service_dropped_total{signal="store"} until a write succeeds again',
                )
            return
        if self._write_failing:
            self._write_failing = False
            diagnostics().info("store_write_recovered", events_not_stored=self._dropped_in_episode)
            self._dropped_in_episode = 0

    def sweep_if_due(self) -> None:
        """Enforce retention when it is time (the worker loop calls this between batches)."""
        now = self._clock()
        if now < self._next_sweep:
            return
        try:
            swept = self._sink.sweep()
        except Exception as exc:  # OSError as a rule; whatever it is, export goes on
            self._next_sweep = now + SWEEP_SECONDS
            if not self._sweep_failing:
                self._sweep_failing = True
                diagnostics().warning("store_retention_failed", error=repr(exc), action="tried again")
            return
        if self._sweep_failing:
            self._sweep_failing = False
            diagnostics().info("store_retention_recovered")
        self._next_sweep = now if not swept.done else now + SWEEP_SECONDS

    def close(self) -> None:
        self._sink.close()
