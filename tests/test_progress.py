"""The export side's positions and their rules, without threads or files (export.progress)."""

from __future__ import annotations

import pytest

from otel_service.export.progress import BatchPlan, Progress
from otel_service.spool import Cursor, Position

P = [Position(1, offset) for offset in range(0, 600, 100)]  # P[0] < P[1] < ... in one segment


def test_a_new_spool_plans_nothing_again() -> None:
    """From an empty cursor every record is counted and sent for the first time."""
    progress = Progress(Cursor.at(P[0]), checkpoint=P[0])
    assert progress.plan(P[1:4], sending=True) == BatchPlan(counted=0, replay=0, resent=0)


def test_after_a_restart_the_saved_cursor_splits_the_batch_into_prefixes() -> None:
    """Delivered: not sent again; in the checkpoint: not counted again; in flight: possible duplicates."""
    cursor = Cursor(delivered=P[2], metrics=P[1], inflight=P[3])
    progress = Progress(cursor, checkpoint=P[1])
    assert progress.plan(P[1:6], sending=True) == BatchPlan(counted=1, replay=2, resent=1)
    assert progress.plan(P[1:6], sending=False).resent == 0


def test_the_checkpoint_not_the_cursor_says_what_was_counted() -> None:
    """A checkpoint saved after the cursor (a crash between the two) is what the totals hold."""
    progress = Progress(Cursor(delivered=P[1], metrics=P[1], inflight=P[1]), checkpoint=P[3])
    assert progress.plan(P[1:6], sending=True).counted == 3


def test_with_a_store_committed_waits_for_its_answer_and_a_checkpoint_holding_it() -> None:
    """A delivered, checkpointed batch keeps its segment until the store answered and a checkpoint saw it."""
    progress = Progress(Cursor.at(P[0]), checkpoint=P[0], storing=True)
    progress.record(P[2])
    progress.deliver(P[2])
    progress.checkpointed(P[2], progress.stored)
    assert progress.cursor().committed == P[0]
    assert progress.reflected() == P[0]
    assert not progress.caught_up(P[2])
    progress.store(P[2])
    assert progress.cursor().committed == P[0]  # a failure's count may not be in a checkpoint yet
    assert progress.reflected() == P[2]
    assert progress.caught_up(P[2])
    progress.checkpointed(P[2], progress.stored)
    assert progress.cursor() == Cursor(P[2], P[2], P[2], P[2])
    assert Cursor.loads(progress.cursor().dumps()) == progress.cursor()


def test_a_cursor_saved_before_the_store_had_a_position_starts_it_at_committed() -> None:
    """Old cursors (the store written in the recording thread) say everything before committed is stored."""
    progress = Progress(Cursor.loads("3 10 2 50 3 10"), checkpoint=P[0], storing=True)
    assert progress.stored == Position(2, 50)
    with pytest.raises(ValueError, match="bad cursor"):
        Cursor.loads("1 0 1 0 1 0 stored 1")


def test_the_committed_position_waits_for_delivery_and_a_checkpoint() -> None:
    """committed = min(delivered, metrics): a batch delivered but not in a checkpoint stays in the spool."""
    progress = Progress(Cursor.at(P[0]), checkpoint=P[0])
    progress.record(P[2])
    progress.hand_over(P[2])
    assert progress.cursor() == Cursor(P[0], P[0], P[2])
    progress.deliver(P[2])
    assert progress.cursor().committed == P[0]
    progress.checkpointed(P[2])
    assert progress.cursor() == Cursor(P[2], P[2], P[2])
    assert progress.cursor().committed == P[2]
    assert progress.caught_up(P[2])
    assert not progress.caught_up(P[3])


@pytest.mark.parametrize("move", ["deliver", "hand_over", "checkpointed"])
def test_positions_never_move_back(move: str) -> None:
    """A late report of an earlier position leaves the cursor where it is."""
    progress = Progress(Cursor.at(P[0]), checkpoint=P[0])
    progress.record(P[4])
    getattr(progress, move)(P[4])
    before = progress.cursor()
    getattr(progress, move)(P[1])
    assert progress.cursor() == before
