"""Delivery of recorded batches to the collector.

Three parts, each wrapping the next (as the collector's exporter helper does): the ``DeliveryThread``
sends handed-over batches in spool order in a thread of its own, one batch behind the recording; the
``RetryingSender`` retries each signal of a batch through the OTLP ``Sender`` with exponential backoff
and jitter (honouring ``Retry-After``) until it is accepted, refused for good, or the stop deadline
passes; the ``Observer`` turns every outcome into ``ExportStatus`` (``/health/detailed``) and the
export metrics.
"""

from __future__ import annotations

import queue
import random as _random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..spool.cursor import Position
from ..telemetry.instruments import WorkerInstruments
from .sender import Sender

__all__ = ["Batch", "DeliveryThread", "ExportStatus", "Observer", "RetryingSender"]

#: How often a thread blocked on the delivery queue looks at the stop flags.
_QUEUE_WAIT = 0.05
_BACKOFF_START = 0.25
_BACKOFF_MAX = 30.0
#: The longest backoff while the backlog is near its bound (intake refusing, or about to): the
#: collector's return is noticed within seconds, not half a minute.
PRESSING_BACKOFF_MAX = 2.0
#: Each backoff wait is drawn within ±this share of its nominal value, so that many sidecars do not
#: retry in step after a collector restart (the collector's own retry sender does the same).
JITTER = 0.2


@dataclass
class ExportStatus:
    """What ``/health/detailed`` and ``/ready`` report about the export path."""

    enabled: bool
    state: str = "idle"  # idle | exporting | retrying | stopped
    processed: int = 0
    exported: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    failures: int = 0
    retries: int = 0
    replayed: int = 0
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "state": self.state,
            "processed": self.processed,
            "exported": dict(self.exported),
            "attempts": self.attempts,
            "failures": self.failures,
            "retries": self.retries,
            "replayed": self.replayed,
            "possible_duplicates": self.duplicates,
            "dropped": dict(self.dropped),
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
        }


class Observer:
    """Turns export outcomes into ``ExportStatus`` and the export metrics: the one place they are
    counted."""

    def __init__(self, status: ExportStatus, instruments: WorkerInstruments) -> None:
        self.status = status
        self._m = instruments

    def attempt(self) -> None:
        self.status.state = "exporting"
        self.status.attempts += 1

    def delivered(self, signal: str, items: int, rejected: int) -> None:
        """The receiver took ``items`` of ``signal``, refusing ``rejected`` of them (partial success)."""
        delivered = items - rejected
        self.status.exported[signal] += delivered
        self._m.export_items.add(delivered, {"signal": signal, "outcome": "success"})
        if rejected:
            self.dropped(signal, "rejected_by_receiver", rejected)
        self.status.last_success = time.time()

    def failed(self, signal: str, items: int, error: str) -> None:
        self.status.failures += 1
        self.status.last_error = f"{signal}: {error}"
        self.status.last_error_time = time.time()
        self._m.export_items.add(items, {"signal": signal, "outcome": "failure"})

    def retrying(self, signal: str) -> None:
        self.status.state = "retrying"
        self.status.retries += 1
        self._m.retries.add(1, {"signal": signal})

    def idle(self) -> None:
        self.status.state = "idle"

    def dropped(self, signal: str, reason: str, count: int) -> None:
        """``count`` items of ``signal`` are lost for ``reason``: counted, never silent."""
        self.status.dropped[reason] += count
        self._m.dropped.add(count, {"signal": signal, "reason": reason})

    def replayed(self, count: int) -> None:
        self.status.replayed += count
        self._m.replayed.add(count)

    def duplicates(self, signal: str, count: int) -> None:
        """``count`` items may reach the collector twice: records sent again after a restart
        (``signal``: traces_and_logs), or spans or log records sent again after a timeout (traces, logs).
        Metrics never are: their totals are restored from the checkpoint, not counted again."""
        self.status.duplicates += count
        self._m.duplicates.add(count, {"signal": signal})


class RetryingSender:
    """Sends every signal of a batch through ``next`` until each is accepted or refused for good."""

    def __init__(
        self,
        next: Sender,
        observer: Observer,
        past_deadline: Callable[[], bool],
        *,
        pressing: Callable[[], bool] = lambda: False,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._next = next
        self._observer = observer
        self._past_deadline = past_deadline
        self._pressing = pressing
        self._random = random

    def send(self, payloads: dict[str, bytes], counts: dict[str, int]) -> bool:
        """Deliver ``payloads`` (signal -> request) of ``counts`` items; ``False`` if the stop deadline
        passed first (the batch then stays in the spool). Permanent refusals are dropped and counted."""
        observer = self._observer
        backoff = _BACKOFF_START
        remaining = dict(payloads)
        #: Signals an earlier attempt may have delivered (timed out after sending): sent again, their
        #: items are possible duplicates.
        maybe_sent: set[str] = set()
        while remaining:
            for signal in list(remaining):
                observer.attempt()
                result = self._next.send(signal, remaining[signal])
                if result.ok:
                    del remaining[signal]
                    observer.delivered(signal, counts[signal], result.rejected)
                    if signal in maybe_sent:
                        observer.duplicates(signal, counts[signal])
                    continue
                if result.maybe_delivered:
                    maybe_sent.add(signal)
                observer.failed(signal, counts[signal], result.error)
                if not result.retry:
                    del remaining[signal]
                    observer.dropped(signal, "rejected_permanently", counts[signal])
                    continue
                wait = result.retry_after if result.retry_after is not None else self._backoff_wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                observer.retrying(signal)
                if not self._sleep(wait):
                    return False
        observer.idle()
        return True

    def _backoff_wait(self, backoff: float) -> float:
        """``backoff`` (at most ``PRESSING_BACKOFF_MAX`` while the backlog is near its bound), within
        ±``JITTER``. A receiver's ``Retry-After`` is honoured as it is instead."""
        if self._pressing():
            backoff = min(backoff, PRESSING_BACKOFF_MAX)
        return backoff * (1 + JITTER * (2 * self._random() - 1))

    def _sleep(self, seconds: float) -> bool:
        """Sleep before a retry; ``False`` if the stop deadline comes first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._past_deadline():
                return False
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return not self._past_deadline()


@dataclass(frozen=True, slots=True)
class Batch:
    """A recorded batch waiting for delivery."""

    payloads: dict[str, bytes]
    counts: dict[str, int]
    end: Position
    #: Records it covers that were not delivered before a restart (for the queued-items count).
    records: int
    oldest_ns: int


class DeliveryThread:
    """Sends handed-over batches in order, in a thread of its own, and reports each delivered one.

    The queue holds one batch: the next is recorded while one is being sent. When the thread ends (all
    handed over, or gave up at the stop deadline: that batch and any after it stay in the spool),
    nothing more is handed over.
    """

    def __init__(
        self,
        sender: RetryingSender,
        delivered: Callable[[Batch], None],
        *,
        stopping: threading.Event,
        past_deadline: Callable[[], bool],
    ) -> None:
        self._sender = sender
        self._delivered = delivered
        self._stopping = stopping
        self._past_deadline = past_deadline
        self._outbox: queue.Queue[Batch] = queue.Queue(maxsize=1)
        #: Intake times of the first event of each batch handed over and not delivered yet.
        self._undelivered: deque[int] = deque()
        #: Set when nothing more will be handed over: the thread empties the outbox and ends.
        self._handed_over = threading.Event()
        #: Set when the thread ended.
        self._gave_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-export-send", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand_over(self, batch: Batch) -> bool:
        """Queue ``batch``; ``False`` if delivery stopped first (at the stop deadline)."""
        self._undelivered.append(batch.oldest_ns)
        while True:
            if self._gave_up.is_set():
                if self._stopping.is_set():
                    return False
                # Only a bug ends delivery otherwise: end the worker too, so readiness reports it.
                raise RuntimeError("the delivery thread ended")
            try:
                self._outbox.put(batch, timeout=_QUEUE_WAIT)
                return True
            except queue.Full:
                if self._past_deadline():
                    return False

    def finish(self) -> None:
        """Nothing more comes: deliver what is queued (each send bounded by the exporter timeout,
        retries by the stop deadline) and wait for the thread to end."""
        self._handed_over.set()
        if self._thread.is_alive():
            self._thread.join()

    def oldest_ns(self) -> int | None:
        """When the oldest event handed over and not delivered yet was accepted (None: none is)."""
        try:
            return self._undelivered[0]
        except IndexError:
            return None

    def _run(self) -> None:
        try:
            while True:
                try:
                    batch = self._outbox.get(timeout=_QUEUE_WAIT)
                except queue.Empty:
                    if self._handed_over.is_set():
                        return
                    continue
                if not self._sender.send(batch.payloads, batch.counts):
                    return
                self._undelivered.popleft()
                self._delivered(batch)
        finally:
            self._gave_up.set()
