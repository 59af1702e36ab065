"""Where the export side stands in the spool: every cursor position and the rules between them.

Pure: no threads, no I/O. The worker holds one ``Progress``, moves it as batches are recorded, handed
over and delivered and as metric pushes go out, and persists ``cursor()``::

    spool:  | done ...... |committed| replayed after a restart ...... |recorded| read next ... |end
                           \\_ min(delivered, metrics)                          \\_ metrics checkpoint
    delivered        spans and logs the collector accepted, up to here
    inflight         the end of the last batch handed to delivery (>= delivered)
    recorded         the end of the last batch recorded (its metrics measured, its span and log built)
    metrics_done     the checkpoint of the last metric push that succeeded
    metrics_pushing  the checkpoint of the push under way (>= metrics_done)

After a restart the saved cursor splits what is read again into prefixes: records before
``delivered`` are replayed into the metrics only; before the saved ``metrics`` they are not counted
again; up to the saved ``inflight`` / ``metrics_inflight`` they may have gone out just before the
crash, so they are sent (counted) again and reported as possible duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..spool.cursor import Cursor, Position

__all__ = ["BatchPlan", "Progress"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What to do with a batch read after a restart, as counts of its leading records."""

    #: Records whose metrics a push before the restart exported: not counted again.
    counted: int
    #: Records whose spans and logs were delivered before the restart: not sent again.
    replay: int
    #: Records counted again that a push under way at the crash may have counted: possible duplicates.
    recounted: int
    #: Records sent again that were being sent at the crash: possible duplicates.
    resent: int


class Progress:
    """The export side's positions in one spool; see the module docstring for the diagram."""

    __slots__ = (
        "_maybe_counted",
        "_metrics_before_start",
        "delivered",
        "inflight",
        "metrics_done",
        "metrics_pushed",
        "metrics_pushing",
        "recorded",
    )

    def __init__(self, cursor: Cursor, *, metrics_pushed: bool) -> None:
        """Start from a saved ``cursor``. ``metrics_pushed``: metrics count as done only once an OTLP
        push covered them; without a push (pull only), as soon as they are recorded."""
        self.metrics_pushed = metrics_pushed
        self.delivered = cursor.delivered
        self.inflight = cursor.inflight
        self.recorded = cursor.committed
        self.metrics_done = cursor.metrics
        self.metrics_pushing = cursor.metrics
        self._metrics_before_start = cursor.metrics
        self._maybe_counted = cursor.metrics_inflight

    def plan(self, ends: Sequence[Position], *, sending: bool) -> BatchPlan:
        """How to treat the records ending at ``ends`` (in spool order); ``sending``: spans and logs
        are exported (else only metrics are)."""
        counted = sum(1 for end in ends if end <= self._metrics_before_start)
        replay = sum(1 for end in ends if end <= self.delivered)
        recounted = sum(1 for end in ends[counted:] if end <= self._maybe_counted)
        resent = sum(1 for end in ends[replay:] if end <= self.inflight) if sending else 0
        return BatchPlan(counted, replay, recounted, resent)

    def record(self, end: Position) -> None:
        """A batch up to ``end`` was recorded."""
        self.recorded = end

    def hand_over(self, end: Position) -> None:
        """A batch up to ``end`` goes to delivery (persist the cursor before sending it)."""
        self.inflight = max(self.inflight, end)

    def deliver(self, end: Position) -> None:
        """A batch up to ``end`` was delivered (or has nothing to send)."""
        self.delivered = max(self.delivered, end)

    def push(self, checkpoint: Position) -> None:
        """A metric push covering everything before ``checkpoint`` is about to be sent."""
        self.metrics_pushing = max(self.metrics_pushing, checkpoint)

    def pushed(self, checkpoint: Position) -> None:
        """A metric push covering everything before ``checkpoint`` succeeded."""
        self.metrics_done = max(self.metrics_done, checkpoint)

    def caught_up(self, end: Position) -> bool:
        """Everything before ``end`` (the spool's end) is recorded and delivered."""
        return self.delivered >= end and self.recorded >= end

    def cursor(self) -> Cursor:
        """What to persist: ``committed`` = min(delivered, metrics) frees the segments before it."""
        metrics = self.metrics_done if self.metrics_pushed else max(self.metrics_done, self.recorded)
        return Cursor(
            self.delivered,
            metrics,
            max(self.delivered, self.inflight),
            max(metrics, self.metrics_pushing),
        )
