"""The export worker: reads the spool, records telemetry, delivers spans and logs, advances the cursor.

It runs off the request path (a thread, or a child process in production). Delivery is at-least-once:
spans and log records of a batch are retried with backoff (honouring ``Retry-After``) until the
collector accepts them. The spool's committed cursor moves past an event only once its spans and logs
are delivered *and* a metric push that includes its contributions succeeded, so a crash loses nothing:
on restart, events already delivered are replayed into the metrics only, and events that were being
sent are sent again (counted as possible duplicates).

Delivery runs in a thread of its own, one batch behind: while the collector answers one batch, the
next is recorded and encoded. Batches are delivered in spool order, so the delivered position only
ever moves forward over a prefix.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._version import __version__
from ..spool.record import Envelope, decode_envelope
from ..spool.segments import Cursor, Position, SpoolReader, count_records, end_position, stats
from ..telemetry.instruments import WorkerInstruments
from . import otlp
from .recorder import Recorder
from .sender import Sender

__all__ = ["ExportStatus", "ExportWorker"]

_POLL_SECONDS = 0.005
#: How often a thread blocked on the delivery queue looks at the stop flags.
_QUEUE_WAIT = 0.05
_BACKOFF_START = 0.25
_BACKOFF_MAX = 30.0


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
    metric_duplicates: int = 0
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
            "possible_metric_duplicates": self.metric_duplicates,
            "dropped": dict(self.dropped),
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
        }


@dataclass(frozen=True, slots=True)
class _Batch:
    """A recorded batch waiting for delivery."""

    payloads: dict[str, bytes]
    counts: dict[str, int]
    end: Position
    #: Records it covers that were not delivered before a restart (for the queued-items count).
    records: int
    oldest_ns: int


class ExportWorker:
    """Moves accepted events from the spool to telemetry, one batch at a time."""

    def __init__(
        self,
        reader: SpoolReader,
        recorder: Recorder,
        instruments: WorkerInstruments,
        *,
        sender: Sender | None,
        resource: bytes,
        batch_size: int = 512,
        linger: float = 0.0,
        metrics_pushed: bool = False,
        metrics_lock: threading.RLock | None = None,
    ) -> None:
        self._reader = reader
        self._recorder = recorder
        self._m = instruments
        self._sender = sender
        self._resource = resource
        self._scope = otlp.scope("otel_service", __version__)
        self._batch_size = batch_size
        #: After a partial batch, wait this long (the standard OTEL_BSP/BLRP schedule delay) for more
        #: events: fewer, fuller export requests under load, at most this much added latency.
        self._linger = linger
        self.status = ExportStatus(enabled=sender is not None)
        self._stop = threading.Event()
        self._deadline: float | None = None
        cursor = reader.cursor
        self._delivered = cursor.delivered
        self._inflight = cursor.inflight
        #: Metrics of events before this were exported before a restart: not recorded again.
        self._metrics_before_start = cursor.metrics
        #: Events up to this may have been in a push that succeeded just before a crash: recorded
        #: again (at least once), and counted as possible metric duplicates.
        self._metrics_maybe_sent = cursor.metrics_inflight
        self._metrics_pushing = cursor.metrics
        #: Held while recording a batch, and by the metric reader while it collects for a push, so
        #: a push's checkpoint covers exactly the events recorded before it.
        self.metrics_lock = metrics_lock if metrics_lock is not None else threading.RLock()
        self._cursor_lock = threading.Lock()
        self._recorded = cursor.committed
        #: With OTLP metric pushes, events count as done only once a push covered them; without
        #: (pull only), as soon as they are recorded.
        self._metrics_pushed = metrics_pushed
        self._metrics_done = cursor.metrics
        #: Records after the delivered position, counted incrementally up to ``_counted_to``.
        self._queued = 0
        self._counted_to = cursor.delivered
        self._queue_lock = threading.Lock()
        #: Recorded batches for the delivery thread: one waits while another is being sent.
        self._outbox: queue.Queue[_Batch] = queue.Queue(maxsize=1)
        #: Intake times of the first event of each batch handed to delivery and not delivered yet.
        self._undelivered: deque[int] = deque()
        #: Set when ``run`` has nothing more to hand over; the delivery thread then empties the
        #: outbox and ends.
        self._handed_over = threading.Event()
        #: Set when the delivery thread ended: at the stop deadline, later batches stay in the spool
        #: too (delivery is in order).
        self._gave_up = threading.Event()

    # -- control -------------------------------------------------------------------------------

    def run(self) -> None:
        """Work until ``stop`` is called and the spool is drained (or the stop deadline passes)."""
        delivery = None
        if self._sender is not None:
            delivery = threading.Thread(target=self._deliver_batches, name="otel-export-send", daemon=True)
            delivery.start()
        try:
            while True:
                processed = self.step()
                if processed == 0:
                    self.save_cursor()
                    if self._stop.is_set():
                        break
                    time.sleep(_POLL_SECONDS)
                elif processed < self._batch_size:
                    self._stop.wait(self._linger)  # a stop ends the wait: drain at once
                if self._past_deadline():
                    break
        finally:
            self._handed_over.set()
            if delivery is not None:
                delivery.join()  # each send is bounded by the exporter timeout, retries by the deadline
            self.save_cursor()
            self.status.state = "stopped"

    def stop(self, timeout: float) -> None:
        """Ask ``run`` to drain what it can within ``timeout`` seconds and return."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything spooled so far is delivered (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.caught_up():
                return True
            time.sleep(0.005)
        return False

    def caught_up(self) -> bool:
        """Everything on disk now has been recorded and delivered."""
        end = end_position(self._reader.directory)
        return self._delivered >= end and self._recorded >= end

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    # -- metric checkpoints (called by the metric reader's push thread) ---------------------------

    def metrics_checkpoint(self) -> Position:
        """The position up to which recorded metrics are in the data being collected now.

        The caller holds ``metrics_lock``."""
        return self._recorded

    def metrics_exporting(self, checkpoint: Position) -> None:
        """A metric push covering everything before ``checkpoint`` is about to be sent: persist
        that first, so a crash during or right after it is known to have possibly counted them."""
        self._metrics_pushing = max(self._metrics_pushing, checkpoint)
        self.save_cursor()

    def metrics_exported(self, checkpoint: Position) -> None:
        """A metric push covering everything before ``checkpoint`` succeeded: persist it at once,
        so a crash right after cannot make a restart count those events again."""
        self._metrics_done = max(self._metrics_done, checkpoint)
        self.save_cursor()

    def save_cursor(self) -> None:
        """Persist how far delivery and metric export got; frees fully done segments."""
        with self._cursor_lock:
            metrics = self._metrics_done if self._metrics_pushed else max(self._metrics_done, self._recorded)
            cursor = Cursor(
                self._delivered,
                metrics,
                max(self._delivered, self._inflight),
                max(metrics, self._metrics_pushing),
            )
            if cursor != self._reader.cursor:
                self._reader.save(cursor)

    # -- one batch -----------------------------------------------------------------------------

    def step(self) -> int:
        """Process one batch; returns how many records it read (0: nothing to do)."""
        payloads, ends = self._reader.read(self._batch_size)
        corrupt = self._reader.corrupt_bytes
        if corrupt:
            self._reader.corrupt_bytes = 0
            self._drop("all", "corrupt_spool_bytes", corrupt)
        if not payloads:
            return 0
        envelopes: list[Envelope] = []
        kept_ends: list[Position] = []
        for payload, end in zip(payloads, ends, strict=True):
            try:
                envelopes.append(decode_envelope(payload))
                kept_ends.append(end)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._drop("all", "undecodable_record", 1)
        # After a restart: events whose metrics were exported are not recorded again, and events
        # whose spans and logs were delivered are not sent again (both are prefixes of the spool).
        counted = sum(1 for end in kept_ends if end <= self._metrics_before_start)
        replay = sum(1 for end in kept_ends if end <= self._delivered)
        with self.metrics_lock:
            recorded = self._recorder.record(envelopes, replay=replay, counted=counted)
            self._recorded = ends[-1]
        self.status.processed += len(envelopes)
        if replay:
            self.status.replayed += replay
            self._m.replayed.add(replay)
        recounted = sum(1 for end in kept_ends[counted:] if end <= self._metrics_maybe_sent)
        if recounted:
            self.status.metric_duplicates += recounted
            self._m.duplicates.add(recounted, {"signal": "metrics"})
        if self._sender is not None and len(envelopes) > replay:
            resent = sum(1 for end in kept_ends[replay:] if end <= self._inflight)
            if resent:
                self.status.duplicates += resent
                self._m.duplicates.add(resent, {"signal": "traces_and_logs"})
            self._inflight = max(self._inflight, ends[-1])
            self.save_cursor()
            batch = _Batch(
                payloads={
                    "traces": otlp.traces_request(self._resource, self._scope, recorded.spans),
                    "logs": otlp.logs_request(self._resource, self._scope, recorded.logs),
                },
                counts={"traces": len(recorded.spans), "logs": len(recorded.logs)},
                end=ends[-1],
                records=len(payloads) - replay,
                oldest_ns=envelopes[replay].received_ns,
            )
            if not self._hand_over(batch):
                return 0  # stopping with the batch undelivered: it stays in the spool
            return len(payloads)
        self._mark_delivered(ends[-1], len(payloads) - replay)
        return len(payloads)

    def _hand_over(self, batch: _Batch) -> bool:
        """Queue ``batch`` for the delivery thread; ``False`` if delivery stopped first."""
        self._undelivered.append(batch.oldest_ns)
        while True:
            if self._gave_up.is_set():
                if self._stop.is_set():
                    return False
                # Only a bug ends delivery otherwise: end the worker too, so readiness reports it.
                raise RuntimeError("the delivery thread ended")
            try:
                self._outbox.put(batch, timeout=_QUEUE_WAIT)
                return True
            except queue.Full:
                if self._past_deadline():
                    return False

    def _deliver_batches(self) -> None:
        """The delivery thread: sends each handed-over batch in order, then moves the cursor. When it
        ends (all handed over, or gave up at the stop deadline: this batch and any after it stay in
        the spool), nothing more is handed over."""
        try:
            while True:
                try:
                    batch = self._outbox.get(timeout=_QUEUE_WAIT)
                except queue.Empty:
                    if self._handed_over.is_set():
                        return
                    continue
                if not self._deliver(batch.payloads, batch.counts):
                    return
                self._undelivered.popleft()
                self._mark_delivered(batch.end, batch.records)
        finally:
            self._gave_up.set()

    def _mark_delivered(self, end: Position, records: int) -> None:
        self._delivered = max(self._delivered, end)
        with self._queue_lock:  # keep _queued = records in [delivered, counted_to)
            if end <= self._counted_to:
                self._queued -= records
            else:
                self._queued, self._counted_to = 0, end
        self.save_cursor()

    def _deliver(self, payloads: dict[str, bytes], counts: dict[str, int]) -> bool:
        assert self._sender is not None
        backoff = _BACKOFF_START
        remaining = dict(payloads)
        while remaining:
            self.status.state = "exporting"
            for signal in list(remaining):
                self.status.attempts += 1
                result = self._sender.send(signal, remaining[signal])
                if result.ok:
                    del remaining[signal]
                    delivered = counts[signal] - result.rejected
                    self.status.exported[signal] += delivered
                    self._m.export_items.add(delivered, {"signal": signal, "outcome": "success"})
                    if result.rejected:
                        self._drop(signal, "rejected_by_receiver", result.rejected)
                    self.status.last_success = time.time()
                    continue
                self.status.failures += 1
                self.status.last_error = f"{signal}: {result.error}"
                self.status.last_error_time = time.time()
                self._m.export_items.add(counts[signal], {"signal": signal, "outcome": "failure"})
                if not result.retry:
                    del remaining[signal]
                    self._drop(signal, "rejected_permanently", counts[signal])
                    continue
                wait = result.retry_after if result.retry_after is not None else backoff
                backoff = min(backoff * 2, _BACKOFF_MAX)
                self.status.state = "retrying"
                self.status.retries += 1
                self._m.retries.add(1, {"signal": signal})
                if not self._sleep(wait):
                    return False
        self.status.state = "idle"
        return True

    def _sleep(self, seconds: float) -> bool:
        """Sleep before a retry; ``False`` if the stop deadline comes first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._past_deadline():
                return False
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return not self._past_deadline()

    def _drop(self, signal: str, reason: str, count: int) -> None:
        self.status.dropped[reason] += count
        self._m.dropped.add(count, {"signal": signal, "reason": reason})

    def queued_items(self) -> int:
        """Accepted events whose spans and logs are not delivered yet (exact; counts frames only
        in the bytes appended since the last call)."""
        with self._queue_lock:
            added, self._counted_to = count_records(self._reader.directory, self._counted_to)
            self._queued += added
            return self._queued

    def oldest_age(self) -> float:
        """Seconds since the oldest event handed to delivery and not delivered yet was accepted
        (0 when caught up)."""
        try:
            oldest = self._undelivered[0]
        except IndexError:
            return 0.0
        return max(0.0, time.time() - oldest / 1e9)

    def spool_json(self) -> dict[str, Any]:
        current = stats(self._reader.directory)
        return {
            "segments": current.segments,
            "items": self.queued_items(),
            "bytes": current.bytes,
            "oldest_age_seconds": round(self.oldest_age(), 3),
        }
