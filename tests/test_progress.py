"""The export side's positions and their rules, without threads or files (export.progress)."""

from __future__ import annotations

import pytest

from otel_service.export.progress import BatchPlan, Progress
from otel_service.spool import Cursor, Position

P = [Position(1, offset) for offset in range(0, 600, 100)]  # P[0] < P[1] < ... in one segment


def test_a_new_spool_plans_nothing_again() -> None:
    """From an empty cursor every record is counted and sent for the first time."""
    progress = Progress(Cursor.at(P[0]), metrics_pushed=True)
    assert progress.plan(P[1:4], sending=True) == BatchPlan(counted=0, replay=0, recounted=0, resent=0)


def test_after_a_restart_the_saved_cursor_splits_the_batch_into_prefixes() -> None:
    """Delivered: replayed; pushed: not counted; in flight at the crash: possible duplicates."""
    cursor = Cursor(delivered=P[2], metrics=P[1], inflight=P[3], metrics_inflight=P[2])
    progress = Progress(cursor, metrics_pushed=True)
    assert progress.plan(P[1:6], sending=True) == BatchPlan(counted=1, replay=2, recounted=1, resent=1)
    assert progress.plan(P[1:6], sending=False).resent == 0


def test_the_committed_position_waits_for_delivery_and_a_metric_push() -> None:
    """committed = min(delivered, metrics): a batch delivered but not yet pushed stays in the spool."""
    progress = Progress(Cursor.at(P[0]), metrics_pushed=True)
    progress.record(P[2])
    progress.hand_over(P[2])
    assert progress.cursor() == Cursor(P[0], P[0], P[2], P[0])
    progress.deliver(P[2])
    assert progress.cursor().committed == P[0]
    progress.push(P[2])
    assert progress.cursor() == Cursor(P[2], P[0], P[2], P[2])
    progress.pushed(P[2])
    assert progress.cursor().committed == P[2]
    assert progress.caught_up(P[2])
    assert not progress.caught_up(P[3])


def test_without_pushes_recorded_metrics_count_as_done() -> None:
    """Pull only (no OTLP endpoint): metrics are done once recorded."""
    progress = Progress(Cursor.at(P[0]), metrics_pushed=False)
    progress.record(P[3])
    progress.deliver(P[3])
    assert progress.cursor().committed == P[3]


@pytest.mark.parametrize("move", ["deliver", "hand_over", "push", "pushed"])
def test_positions_never_move_back(move: str) -> None:
    """A late report of an earlier position leaves the cursor where it is."""
    progress = Progress(Cursor.at(P[0]), metrics_pushed=True)
    progress.record(P[4])
    getattr(progress, move)(P[4])
    before = progress.cursor()
    getattr(progress, move)(P[1])
    assert progress.cursor() == before
