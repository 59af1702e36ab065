"""The export worker's loop: read a batch from the spool, record its telemetry, hand it to delivery,
persist how far it got.

It runs off the request path (a thread, or a child process in production). Spans and logs are
delivered at least once: the spool's committed cursor moves past an event only once they are delivered
*and* its metric contributions are in a saved checkpoint. Metrics are exact: every push or scrape first
saves the totals it exposes with the position they cover (``checkpoint``), and a restart restores them
and counts only what comes after (``progress`` has the positions and the rules; ``delivery`` the
sending, retries and accounting; ``sink`` the event store's feed).

Length: the loop, the checkpoints and the path of one batch read as one; each part it drives is a
module of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from .._version import __version__
from ..spool.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from ..spool.cursor import Position
from ..spool.directory import end_position, stats
from ..spool.reader import SpoolReader
from ..spool.record import Envelope, decode_envelope
from ..telemetry.instruments import WorkerInstruments
from ..telemetry.logs import diagnostics
from . import otlp
from .backlog import Backlog
from .delivery import Batch, DeliveryThread, ExportStatus, Observer, RetryingSender
from .progress import Progress
from .recorder import Recorder
from .sender import Sender
from .sink import SinkFeed, StoreLink

__all__ = ["ExportStatus", "ExportWorker", "MetricState"]

_POLL_SECONDS = 0.005
#: How often the metric totals are saved when events were recorded and nothing exposed them
#: meanwhile (what a restart replays, and how long recorded events keep their segment).
CHECKPOINT_SECONDS = 1.0


class MetricState(Protocol):
    """The cumulative totals the export side records (``telemetry.aggregates.Aggregates``)."""

    @property
    def lock(self) -> threading.RLock: ...

    def dump(self) -> dict[str, Any]: ...

    def restore(self, dumped: Mapping[str, Any]) -> None: ...

    def keep(self, name: str, dump: Callable[[], Any], restore: Callable[[Any], None]) -> None: ...


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
        metric_state: MetricState,
        batch_size: int = 512,
        linger: float = 0.0,
        pressing: Callable[[], bool] = lambda: False,
        store: StoreLink | None = None,
    ) -> None:
        """``metric_state``: the totals to restore and checkpoint (restored here, from the spool's
        checkpoint); ``pressing``: whether the backlog is near its bound (retries then probe sooner);
        ``store``: where each recorded batch is also kept (the event store)."""
        self._reader = reader
        self._recorder = recorder
        self._resource = resource
        self._scope = otlp.scope("otel_service", __version__)
        self._batch_size = batch_size
        #: After a partial batch, wait this long (the standard OTEL_BSP/BLRP schedule delay) for more
        #: events: fewer, fuller export requests under load, at most this much added latency.
        self._linger = linger
        self.status = ExportStatus(enabled=sender is not None)
        self._observer = Observer(self.status, instruments)
        self._state = metric_state
        self._sink = None
        if store is not None:
            self._sink = SinkFeed(store, self._observer, metric_state.lock, self._stored)
            metric_state.keep("store_accounted", self._sink.dump, self._sink.restore)
        self._progress = Progress(
            reader.cursor, checkpoint=self._restore(reader.cursor.metrics), storing=store is not None
        )
        #: Held while a checkpoint is taken and saved (taken in order, saved in order).
        self._checkpoint_lock = threading.Lock()
        self._checkpointed_at = time.monotonic()
        self._checkpoint_failing = False
        self._backlog = Backlog(reader.directory, reader.cursor.delivered)
        self._stop = threading.Event()
        self._deadline: float | None = None
        #: Held while recording a batch, and while a checkpoint is taken, so a checkpoint covers
        #: exactly the events recorded before its position.
        self.metrics_lock = metric_state.lock
        self._cursor_lock = threading.Lock()
        self._delivery = (
            None
            if sender is None
            else DeliveryThread(
                RetryingSender(sender, self._observer, self._past_deadline, pressing=pressing),
                self._delivered,
                stopping=self._stop,
                past_deadline=self._past_deadline,
            )
        )

    # -- control -------------------------------------------------------------------------------

    def run(self) -> None:
        """Work until ``stop`` is called and the spool is drained (or the stop deadline passes)."""
        if self._delivery is not None:
            self._delivery.start()
        try:
            while True:
                processed = self.step()
                if processed == 0:
                    if self._sink is not None:
                        self._sink.flush()
                    self.save_cursor()
                    if self._stop.is_set():
                        break
                    time.sleep(_POLL_SECONDS)
                elif processed < self._batch_size:
                    self._stop.wait(self._linger)  # a stop ends the wait: drain at once
                if (
                    self._progress.recorded > self._progress.metrics
                    and time.monotonic() - self._checkpointed_at >= CHECKPOINT_SECONDS
                ):
                    self.checkpoint()  # (pushes and scrapes save what else changed, first)
                if self._sink is not None:
                    self._sink.poll(0.0)
                if self._past_deadline():
                    break
        finally:
            if self._delivery is not None:
                self._delivery.finish()
            if self._sink is not None:
                self._sink.finish(self._deadline if self._deadline is not None else time.monotonic() + 5.0)
            self.checkpoint()
            if self._sink is not None:
                self._sink.close(timeout=max(0.1, (self._deadline or time.monotonic()) - time.monotonic()))
            self.status.state = "stopped"

    def stop(self, timeout: float) -> None:
        """Ask ``run`` to drain what it can within ``timeout`` seconds and return."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()

    def close(self) -> None:
        """Let go of the spool (its reader lock), after ``run``."""
        self._reader.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything spooled so far is delivered (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.caught_up():
                return True
            time.sleep(0.005)
        return False

    def recorded_to(self) -> Position:
        """Every event before it is recorded (its metrics counted, its span and log built) and, with a
        store, stored (or counted as not stored)."""
        return self._progress.reflected()

    def caught_up(self) -> bool:
        """Everything on disk now has been recorded, delivered and (with a store) stored."""
        return self._progress.caught_up(end_position(self._reader.directory))

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    # -- metric checkpoints ----------------------------------------------------------------------

    def _restore(self, fallback: Position) -> Position:
        """Restore the totals of the spool's checkpoint; the position from which events are counted."""
        try:
            saved = read_checkpoint(self._reader.directory)
        except (OSError, ValueError) as exc:
            diagnostics().error(
                "metric_checkpoint_unreadable",
                error=str(exc),
                action="metric totals start again from zero under the same series",
            )
            return fallback
        if saved is None:
            return fallback
        self._state.restore(saved.state)
        return saved.position

    def checkpoint(self, collect: Callable[[], None] | None = None) -> bool:
        """Save the totals with the position they cover, then move the cursor's ``metrics`` there;
        ``False`` if they could not be saved (disk full: logged once, tried again next time).

        ``collect`` (a push or a scrape) reads exactly those totals; it runs before they are saved and
        what it read is to be exposed only once they are: then nothing ever exposed is ahead of the
        saved totals, and a restart never makes a series go back."""
        with self._checkpoint_lock:
            with self.metrics_lock:
                # The totals hold every event before the restored checkpoint too (replayed after a
                # restart without being counted again): never save them at an earlier position.
                covered = max(self._progress.recorded, self._progress.metrics)
                taken = Checkpoint(covered, self._state.dump())
                stored = self._progress.stored
                if collect is not None:
                    collect()
            self._checkpointed_at = time.monotonic()
            try:
                write_checkpoint(self._reader.directory, taken)
            except OSError as exc:
                if not self._checkpoint_failing:
                    diagnostics().warning(
                        "metric_checkpoint_failed",
                        error=str(exc),
                        action="pushes wait and the spool keeps the events until it can be saved",
                    )
                self._checkpoint_failing = True
                return False
            self._checkpoint_failing = False
            self._progress.checkpointed(taken.position, stored)
            self.save_cursor()
            return True

    def save_cursor(self) -> None:
        """Persist how far delivery and metric export got; frees fully done segments."""
        with self._cursor_lock:
            cursor = self._progress.cursor()
            if cursor != self._reader.cursor:
                self._reader.save(cursor)

    # -- one batch -----------------------------------------------------------------------------

    def step(self) -> int:
        """Process one batch; returns how many records it read (0: nothing to do)."""
        payloads, ends = self._reader.read(self._batch_size)
        corrupt = self._reader.corrupt_bytes
        if corrupt:
            self._reader.corrupt_bytes = 0
            self._observer.dropped("all", "corrupt_spool_bytes", corrupt)
        if not payloads:
            return 0
        envelopes: list[Envelope] = []
        kept: list[bytes] = []
        kept_ends: list[Position] = []
        for payload, end in zip(payloads, ends, strict=True):
            try:
                envelopes.append(decode_envelope(payload))
                kept.append(payload)
                kept_ends.append(end)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._observer.dropped("all", "undecodable_record", 1)
        plan = self._progress.plan(kept_ends, sending=self._delivery is not None)
        with self.metrics_lock:
            recorded = self._recorder.record(envelopes, replay=plan.replay, counted=plan.counted)
            self._progress.record(ends[-1])
        if self._sink is not None:  # the cursor waits for its answer (``Progress.stored``)
            self._sink.write(kept, kept_ends, recorded.derived, end=ends[-1])
        self.status.processed += len(envelopes)
        if plan.replay:
            self._observer.replayed(plan.replay)
        if self._delivery is None or len(envelopes) == plan.replay:
            self._delivered_to(ends[-1], len(payloads) - plan.replay)
            return len(payloads)
        if plan.resent:
            self._observer.duplicates("traces_and_logs", plan.resent)
            self.checkpoint()  # the count is on disk before the resend goes out
        self._progress.hand_over(ends[-1])
        self.save_cursor()
        batch = Batch(
            payloads={
                "traces": otlp.traces_request(self._resource, self._scope, recorded.spans),
                "logs": otlp.logs_request(self._resource, self._scope, recorded.logs),
            },
            counts={"traces": len(recorded.spans), "logs": len(recorded.logs)},
            end=ends[-1],
            records=len(payloads) - plan.replay,
            oldest_ns=envelopes[plan.replay].received_ns,
        )
        if not self._delivery.hand_over(batch):
            return 0  # stopping with the batch undelivered: it stays in the spool
        return len(payloads)

    def _stored(self, end: Position) -> None:
        self._progress.store(end)

    def _delivered(self, batch: Batch) -> None:
        self._delivered_to(batch.end, batch.records)

    def _delivered_to(self, end: Position, records: int) -> None:
        self._progress.deliver(end)
        self._backlog.delivered(end, records)
        self.save_cursor()

    # -- state for /metrics and /health/detailed -------------------------------------------------

    def queued_items(self) -> int:
        """Accepted events whose spans and logs are not delivered yet (exact)."""
        return self._backlog.count()

    def oldest_age(self) -> float:
        """Seconds since the oldest event handed to delivery and not delivered yet was accepted
        (0 when caught up)."""
        oldest = None if self._delivery is None else self._delivery.oldest_ns()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e9)

    def spool_json(self) -> dict[str, Any]:
        current = stats(self._reader.directory)
        return {
            "segments": current.segments,
            "items": self.queued_items(),
            "bytes": current.bytes,
            "oldest_age_seconds": round(self.oldest_age(), 3),
        }
