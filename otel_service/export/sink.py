"""Where the worker keeps each batch's events besides exporting them: the event store, reached over a
``StoreLink`` (its own process, ``runtime.store_link``; export never imports the store).

``SinkFeed`` sends each recorded batch (its spool records as they are, and what the recorder worked
out) and goes on with the next one at once: the store's inserts and indexes cost about as much CPU
per event as the rest of export, and in its own process they run beside it instead of in turn. The
store answers each batch in order. Until it has, the batch keeps its segment: ``Progress.stored``
holds the cursor back, so a crash replays it, and the store, idempotent by event ID, keeps one row
per event.

A batch the store could not write (a full disk, anything else) never stops export: its events are
counted as dropped (``signal="store"``) once per event, however often a replay fails again (the
position up to which outcomes are counted, ``accounted_to``, is saved in the metric checkpoint with
the counts), and reported once per episode (``store_write_failed``, then ``store_write_recovered``).
A store side that dies is started again and the batches it had not answered are sent again; one
that answers nothing for ``STALL_SECONDS`` while batches wait is started again too, and the batches
it held are counted as dropped (``store_stalled``): export never waits on the store for longer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..spool import Position
from ..telemetry.logs import diagnostics
from .delivery import Observer
from .recorder import Derived

__all__ = [
    "MAX_WAITING",
    "SEND_EVENTS",
    "SEND_SECONDS",
    "STALL_SECONDS",
    "SinkFeed",
    "StoreLink",
    "StoreReply",
]

#: Batches sent and not answered yet before ``write`` waits for the store (its backpressure).
MAX_WAITING = 32
#: Recorded events gathered into one message, and how long the first waits at most (fewer, larger
#: messages: sent batch by batch, single events cost the export process ~10 µs each more).
SEND_EVENTS = 512
SEND_SECONDS = 0.01
#: How long the store may answer nothing while batches wait, before it is started again.
STALL_SECONDS = 10.0


class StoreReply(NamedTuple):
    """The store's answer to the batch numbered ``seq``: ``error`` is ``None`` when it was stored."""

    seq: int
    error: str | None


class StoreLink(Protocol):
    """The store's side of the feed (``runtime.store_link.StoreLink``)."""

    def send(self, seq: int, payloads: Sequence[bytes], derived: Sequence[Derived | None]) -> None:
        """Hand a batch over. Raises ``OSError`` when the store side is gone."""
        ...

    def receive(self, timeout: float) -> list[StoreReply]:
        """The answers that came, waiting up to ``timeout`` for the first. Raises ``OSError`` when the
        store side is gone."""
        ...

    def restart(self) -> None:
        """Stop the store side (at once) and start a new one."""
        ...

    def close(self, timeout: float) -> None: ...


@dataclass(slots=True)
class _Batch:
    """Recorded events gathered into one message to the store."""

    payloads: list[bytes]
    ends: list[Position]
    derived: list[Derived | None]
    #: The end in the spool of the last batch gathered (past its last record, kept or not).
    end: Position


class SinkFeed:
    """Feeds the store from the worker loop (one thread: the worker's)."""

    def __init__(
        self,
        link: StoreLink,
        observer: Observer,
        lock: threading.RLock,
        stored: Callable[[Position], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lock``: the metrics lock (a failure is counted under it, with ``accounted_to``);
        ``stored``: told the end of each batch the store answered for (under the same lock)."""
        self._link = link
        self._observer = observer
        self._lock = lock
        self._stored = stored
        self._clock = clock
        self._seq = 0
        self._waiting: dict[int, _Batch] = {}
        self._gathered: _Batch | None = None
        self._gathered_at = 0.0
        self._answered_at = clock()
        #: The end of a batch with nothing to store, sent after those still waiting.
        self._trailing: Position | None = None
        #: Every event before it was stored or counted as not stored (in the metric checkpoint).
        self.accounted_to: Position | None = None
        self._write_failing = False
        self._dropped_in_episode = 0

    # -- the checkpoint's part (``Aggregates.keep``) --------------------------------------------

    def dump(self) -> list[int] | None:
        at = self.accounted_to
        return None if at is None else [at.segment, at.offset]

    def restore(self, dumped: Any) -> None:
        self.accounted_to = None if dumped is None else Position(int(dumped[0]), int(dumped[1]))

    # -- the worker's side ----------------------------------------------------------------------

    def write(
        self,
        payloads: Sequence[bytes],
        ends: Sequence[Position],
        derived: Sequence[Derived | None],
        *,
        end: Position,
    ) -> None:
        """Gather a recorded batch for the store: the records of its envelopes, their ends, the
        recorder's values, and where the batch ends (past records that could not be decoded, if any).
        Sent once ``SEND_EVENTS`` are gathered or the first waited ``SEND_SECONDS``, or at ``flush``."""
        gathered = self._gathered
        if gathered is None:
            gathered = self._gathered = _Batch(list(payloads), list(ends), list(derived), end)
            self._gathered_at = self._clock()
        else:
            gathered.payloads += payloads
            gathered.ends += ends
            gathered.derived += derived
            gathered.end = end
        if len(gathered.payloads) >= SEND_EVENTS or self._clock() - self._gathered_at >= SEND_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send what is gathered (the worker calls this when it has nothing to read)."""
        batch, self._gathered = self._gathered, None
        if batch is None:
            return
        if not batch.payloads:  # nothing to store; its end counts once the batches before it are answered
            with self._lock:
                if self._waiting:
                    self._trailing = batch.end
                else:
                    self._account(batch.end)
            return
        self._seq += 1
        if not self._waiting:
            self._answered_at = self._clock()
        self._waiting[self._seq] = batch
        try:
            self._link.send(self._seq, batch.payloads, batch.derived)
        except OSError:
            self._restart()
        while len(self._waiting) > MAX_WAITING:
            self.poll(0.05)

    def waiting(self) -> int:
        """Batches sent and not answered yet."""
        return len(self._waiting)

    def poll(self, timeout: float) -> None:
        """Take the store's answers (waiting up to ``timeout`` for one); start the store side again if
        it is gone, or stalled; send what is gathered when it is due."""
        if self._gathered is not None and self._clock() - self._gathered_at >= SEND_SECONDS:
            self.flush()
        try:
            replies = self._link.receive(timeout)
        except OSError:
            self._restart()
            return
        now = self._clock()
        if replies:
            self._answered_at = now
        for reply in replies:
            batch = self._waiting.pop(reply.seq, None)
            if batch is not None:
                self._answered(batch, reply.error)
        if self._waiting and now - self._answered_at > STALL_SECONDS:
            self._stalled()

    def finish(self, deadline: float) -> None:
        """Send what is gathered and wait (until ``deadline``, a ``clock()`` value) for the answers."""
        self.flush()
        while self._waiting and self._clock() < deadline:
            self.poll(min(0.05, max(0.0, deadline - self._clock())))

    def close(self, timeout: float) -> None:
        self._link.close(timeout)

    # -- answers ----------------------------------------------------------------------------------

    def _answered(self, batch: _Batch, error: str | None) -> None:
        with self._lock:
            if error is not None:
                self._count_lost(batch.ends, "store_unwritable", error)
            elif self._write_failing:
                self._write_failing = False
                diagnostics().info("store_write_recovered", events_not_stored=self._dropped_in_episode)
                self._dropped_in_episode = 0
            self._account(batch.end)

    def _count_lost(self, ends: Sequence[Position], reason: str, error: str) -> None:
        before = self.accounted_to
        lost = len(ends) if before is None else sum(1 for end in ends if end > before)
        if lost:
            self._observer.dropped("store", reason, lost)
            self._dropped_in_episode += lost
        if not self._write_failing:
            self._write_failing = True
            diagnostics().warning(
                "store_write_failed",
                error=error,
                reason=reason,
                action="export goes on; the events not stored are counted in "
                'otel_service_dropped_total{signal="store"} until a write succeeds again',
            )

    def _account(self, end: Position) -> None:
        if self._trailing is not None and not self._waiting:
            end, self._trailing = max(end, self._trailing), None
        self.accounted_to = end if self.accounted_to is None else max(self.accounted_to, end)
        self._stored(end)

    def _restart(self) -> None:
        """The store side is gone: start it again and send again what it had not answered."""
        diagnostics().warning("store_process_exited", waiting_batches=len(self._waiting), action="restarted")
        self._link.restart()
        self._answered_at = self._clock()
        try:
            for seq, batch in self._waiting.items():
                self._link.send(seq, batch.payloads, batch.derived)
        except OSError:
            pass  # gone again: the next poll starts it again

    def _stalled(self) -> None:
        """Nothing answered for too long: count what waits as not stored, and start it again."""
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
            for batch in waiting:
                self._count_lost(batch.ends, "store_stalled", f"no answer for {STALL_SECONDS:g} s")
                self._account(batch.end)
        self._link.restart()
        self._answered_at = self._clock()
