"""Where the export side stands in the spool: every cursor position and the rules between them.

Pure: no threads, no I/O. The worker holds one ``Progress``, moves it as batches are recorded, handed
over and delivered and as metric checkpoints are saved, and persists ``cursor()``::

    spool:  | done ...... |committed| replayed after a restart ...... |recorded| read next ... |end
                           \\_ min(delivered, metrics)
    delivered        spans and logs the collector accepted, up to here
    inflight         the end of the last batch handed to delivery (>= delivered)
    recorded         the end of the last batch recorded (its metrics measured, its span and log built)
    metrics          the position of the last metric checkpoint saved: the cumulative totals of every
                     event before it are on disk (``spool.checkpoint``)
    stored           (with an event store) every event before it is in the store or, if it could not
                     be, counted as not stored; persisted only once a checkpoint holds those counts

After a restart the totals are restored from the checkpoint and what is read again splits into
prefixes: records before ``delivered`` are not sent again; before ``metrics`` they are not counted
again (so every event is counted exactly once, whatever was pushed before the crash); up to the saved
``inflight`` they may have gone out just before the crash, so they are sent again and reported as
possible duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..spool.cursor import Cursor, Position

__all__ = ["BatchPlan", "Progress"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What to do with a batch read after a restart, as counts of its leading records."""

    #: Records whose metrics the restored checkpoint holds: not counted again.
    counted: int
    #: Records whose spans and logs were delivered before the restart: not sent again.
    replay: int
    #: Records sent again that were being sent at the crash: possible duplicates.
    resent: int


class Progress:
    """The export side's positions in one spool; see the module docstring for the diagram."""

    __slots__ = (
        "_counted_before_start",
        "delivered",
        "inflight",
        "metrics",
        "recorded",
        "stored",
        "stored_checkpointed",
    )

    def __init__(self, cursor: Cursor, *, checkpoint: Position, storing: bool = False) -> None:
        """Start from a saved ``cursor`` and the position of the restored metric ``checkpoint``;
        ``storing``: batches also go to an event store (asynchronously), and wait for it."""
        self.delivered = cursor.delivered
        self.inflight = cursor.inflight
        self.recorded = cursor.committed
        self.metrics = checkpoint
        self._counted_before_start = checkpoint
        # (A cursor saved without a store position was saved while the store, if any, was written in
        # the recording thread: everything before ``committed`` was stored.)
        start = cursor.committed if cursor.stored is None else cursor.stored
        self.stored: Position | None = start if storing else None
        self.stored_checkpointed: Position | None = self.stored

    def plan(self, ends: Sequence[Position], *, sending: bool) -> BatchPlan:
        """How to treat the records ending at ``ends`` (in spool order); ``sending``: spans and logs
        are exported (else only metrics are)."""
        counted = sum(1 for end in ends if end <= self._counted_before_start)
        replay = sum(1 for end in ends if end <= self.delivered)
        resent = sum(1 for end in ends[replay:] if end <= self.inflight) if sending else 0
        return BatchPlan(counted, replay, resent)

    def record(self, end: Position) -> None:
        """A batch up to ``end`` was recorded."""
        self.recorded = end

    def hand_over(self, end: Position) -> None:
        """A batch up to ``end`` goes to delivery (persist the cursor before sending it)."""
        self.inflight = max(self.inflight, end)

    def deliver(self, end: Position) -> None:
        """A batch up to ``end`` was delivered (or has nothing to send)."""
        self.delivered = max(self.delivered, end)

    def store(self, end: Position) -> None:
        """The store answered for a batch up to ``end`` (stored it, or failed and it was counted)."""
        if self.stored is not None:
            self.stored = max(self.stored, end)

    def checkpointed(self, position: Position, stored: Position | None = None) -> None:
        """The totals of every event before ``position`` were saved, with the store's outcomes
        before ``stored``."""
        self.metrics = max(self.metrics, position)
        if stored is not None and self.stored_checkpointed is not None:
            self.stored_checkpointed = max(self.stored_checkpointed, stored)

    def reflected(self) -> Position:
        """Every event before it is in the metrics and, with a store, in the store (or counted)."""
        return self.recorded if self.stored is None else min(self.recorded, self.stored)

    def caught_up(self, end: Position) -> bool:
        """Everything before ``end`` (the spool's end) is recorded, delivered and stored."""
        return self.delivered >= end and self.reflected() >= end

    def cursor(self) -> Cursor:
        """What to persist: ``committed`` = min(delivered, metrics, stored) frees the segments before
        it. The store's position counts once a checkpoint holds the outcomes before it."""
        stored = None
        if self.stored is not None and self.stored_checkpointed is not None:
            stored = min(self.stored, self.stored_checkpointed)
        return Cursor(self.delivered, self.metrics, max(self.delivered, self.inflight), stored)
