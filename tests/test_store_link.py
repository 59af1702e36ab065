"""The worker's feed to the event store's process: answers in order, failures counted once, restarts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from otel_service.export.delivery import ExportStatus, Observer
from otel_service.export.recorder import Derived
from otel_service.export.sink import SEND_EVENTS, SEND_SECONDS, STALL_SECONDS, SinkFeed, StoreReply
from otel_service.model.events import LlmCall
from otel_service.runtime.store_link import StoreLink
from otel_service.runtime.store_process import decode_reply, encode, serve
from otel_service.spool import Position
from otel_service.spool.record import Envelope, encode_envelope
from otel_service.store import EventStore, Retention
from otel_service.telemetry.aggregates import Aggregates
from otel_service.telemetry.instruments import WorkerInstruments

NO_BOUNDS = Retention(0, 0)


def _records(first: int, count: int) -> tuple[list[bytes], list[Position], list[Derived | None]]:
    payloads = [
        encode_envelope(
            Envelope(
                event=LlmCall(model="gpt-4o", duration_ms=10.0, business_id="acme"),
                trace_id=f"{n + 1:032x}",
                span_id=f"{n + 1:016x}",
                parent_span_id=None,
                correlation_id=f"corr-{n}",
                end_ns=1_700_000_000_000_000_000 + n,
                received_ns=1_700_000_000_000_000_000 + n,
                source="events",
            )
        )
        for n in range(first, first + count)
    ]
    ends = [Position(1, 10 * (n + 1)) for n in range(first, first + count)]
    return payloads, ends, [None] * count


class _Link:
    """A store side that answers ``error`` (or stores) on ``receive``; ``silent``: answers nothing."""

    def __init__(self) -> None:
        self.error: str | None = "database or disk is full"
        self.silent = False
        self.sent: list[int] = []
        self.restarts = 0
        self.stored: list[int] = []

    def send(self, seq: int, payloads: Sequence[bytes], derived: Sequence[Any]) -> None:
        self.sent.append(seq)

    def receive(self, timeout: float) -> list[StoreReply]:
        if self.silent:
            return []
        replies = [StoreReply(seq, self.error) for seq in self.sent]
        if self.error is None:
            self.stored += self.sent
        self.sent = []
        return replies

    def restart(self) -> None:
        self.restarts += 1
        self.sent = []

    def close(self, timeout: float) -> None:
        pass


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **_: Any) -> None:
        self.events.append(event)

    info = warning


def _send(feed: SinkFeed, records: tuple[list[bytes], list[Position], list[Any]], end: Position) -> None:
    """Write a batch, send it at once and take the answers."""
    feed.write(*records, end=end)
    feed.flush()
    feed.poll(0.0)


def _feed(
    link: Any, clock: Any = time.monotonic
) -> tuple[SinkFeed, ExportStatus, WorkerInstruments, list[Position]]:
    status = ExportStatus(enabled=True)
    instruments = WorkerInstruments.create(Aggregates("t", "0", 100))
    stored: list[Position] = []
    feed = SinkFeed(link, Observer(status, instruments), threading.RLock(), stored.append, clock=clock)
    return feed, status, instruments, stored


def test_failed_writes_are_counted_once_per_event_and_logged_once_per_episode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each event not stored counts as dropped once (a replay after a restart too); one log per episode."""
    log = _Log()
    monkeypatch.setattr("otel_service.export.sink.diagnostics", lambda: log)
    link = _Link()
    feed, status, instruments, stored = _feed(link)
    records = _records(0, 5)
    ends = records[1]
    _send(feed, records, ends[-1])
    assert stored == [ends[-1]]
    assert feed.accounted_to == ends[-1]
    # A restart restores the checkpoint, saved when the first two of these were accounted for.
    feed.restore([ends[1].segment, ends[1].offset])
    _send(feed, records, ends[-1])  # the replay: 3 more not stored
    link.error = None
    _send(feed, _records(5, 2), Position(1, 70))
    assert status.dropped == {"store_unwritable": 8}
    assert instruments.dropped.value({"signal": "store", "reason": "store_unwritable"}) == 8
    assert log.events == ["store_write_failed", "store_write_recovered"]
    assert stored[-1] == Position(1, 70)


def test_the_store_position_waits_for_answers_in_order_and_for_batches_before_an_empty_one() -> None:
    """Nothing counts as stored before the store answered it, an empty batch's end included."""
    link = _Link()
    link.silent = True
    feed, _, _, stored = _feed(link)
    _send(feed, _records(0, 3), Position(1, 30))
    _send(feed, ([], [], []), Position(1, 99))  # every record of it undecodable, sent on its own
    assert stored == []
    assert feed.waiting() == 1
    link.silent = False
    link.error = None
    feed.poll(0.0)
    assert stored == [Position(1, 99)]
    assert feed.waiting() == 0


def test_a_store_that_answers_nothing_is_counted_and_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled store costs export STALL_SECONDS at most: what it held is counted as not stored."""
    monkeypatch.setattr("otel_service.export.sink.diagnostics", _Log)
    now = [0.0]
    link = _Link()
    link.silent = True
    feed, status, _, stored = _feed(link, clock=lambda: now[0])
    _send(feed, _records(0, 4), Position(1, 40))
    now[0] = STALL_SECONDS / 2
    feed.poll(0.0)
    assert link.restarts == 0
    assert feed.waiting() == 1
    now[0] = STALL_SECONDS + 1
    feed.poll(0.0)
    assert link.restarts == 1
    assert feed.waiting() == 0
    assert status.dropped == {"store_stalled": 4}
    assert stored == [Position(1, 40)]


def _rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT trace_id, correlation_id FROM events ORDER BY trace_id").fetchall()


def test_a_killed_store_process_is_started_again_and_gets_what_it_had_not_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the store process loses no row and stores none twice: unanswered batches go again."""
    monkeypatch.setattr("otel_service.export.sink.diagnostics", _Log)
    path = tmp_path / "events.sqlite"
    link = StoreLink(path, NO_BOUNDS, log_level="warning")
    try:
        feed, status, _, stored = _feed(link)
        _send(feed, _records(0, 50), Position(1, 500))
        feed.finish(time.monotonic() + 30)
        assert stored == [Position(1, 500)]
        host = link._host
        assert host is not None
        assert host.pid is not None
        os.kill(host.pid, signal.SIGKILL)
        host.join(10)
        _send(feed, _records(50, 50), Position(1, 1000))
        feed.finish(time.monotonic() + 30)
        assert stored[-1] == Position(1, 1000)
        assert status.dropped == {}
        assert link._host is not host
        rows = _rows(path)
        assert len(rows) == 100 == len(set(rows))
        assert link.counts()["written"] == 100
    finally:
        link.close(5.0)


def test_batches_queued_behind_a_commit_are_written_together_and_each_answered(tmp_path: Path) -> None:
    """The store's thread takes every batch waiting into one transaction and answers each in order."""
    link = StoreLink(tmp_path / "events.sqlite", NO_BOUNDS, log_level="warning", in_thread=True)
    try:
        for n in range(10):
            link.send(n + 1, *_records(10 * n, 10)[::2])
        answered: list[StoreReply] = []
        deadline = time.monotonic() + 30
        while len(answered) < 10 and time.monotonic() < deadline:
            answered += link.receive(0.1)
        assert answered == [StoreReply(n + 1, None) for n in range(10)]
        assert len(_rows(tmp_path / "events.sqlite")) == 100
    finally:
        link.close(5.0)


def test_batches_are_gathered_into_one_message_until_enough_or_the_first_waited_long_enough() -> None:
    """Small batches go out together: at SEND_EVENTS events, after SEND_SECONDS, or when flushed."""
    now = [0.0]
    link = _Link()
    link.error = None
    feed, _, _, stored = _feed(link, clock=lambda: now[0])
    feed.write(*_records(0, 2), end=Position(1, 20))
    feed.write(*_records(2, 3), end=Position(1, 50))
    feed.poll(0.0)
    assert link.stored == []
    assert stored == []
    now[0] = SEND_SECONDS
    feed.poll(0.0)  # (sent now; its answer comes with the next)
    feed.poll(0.0)
    assert link.stored == [1]
    assert stored == [Position(1, 50)]
    feed.write(*_records(5, SEND_EVENTS), end=Position(2, 0))
    feed.poll(0.0)
    assert link.stored == [1, 2]
    feed.write(*_records(0, 1), end=Position(2, 10))
    feed.finish(now[0] + 1)
    assert link.stored == [1, 2, 3]
    assert stored[-1] == Position(2, 10)


def test_retention_goes_on_while_batches_keep_coming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that always has a batch waiting still sweeps: rows expire between its transactions."""
    monkeypatch.setattr("otel_service.runtime.store_process.MAX_ROWS_PER_TRANSACTION", 10)
    monkeypatch.setattr("otel_service.runtime.store_process.SWEEP_SECONDS", 0.0)
    ours, theirs = multiprocessing.Pipe()
    for n in range(100):  # all waiting before the store reads the first (a year old: all expire)
        payloads, _, derived = _records(n, 1)
        ours.send_bytes(encode((n + 1, payloads, derived)))
    store = EventStore(tmp_path / "events.sqlite", Retention(max_age_ns=86_400 * 10**9, max_bytes=0))
    server = threading.Thread(target=serve, args=(theirs, store), daemon=True)
    server.start()
    expired: list[int] = []
    answered: list[int] = []
    while len(answered) < 100:
        assert ours.poll(30)
        seqs, _, counts = decode_reply(ours.recv_bytes())
        answered += seqs
        expired.append(counts["expired"])
    ours.close()
    server.join(10)
    assert answered == list(range(1, 101))
    assert expired[-1] > 0  # swept before the last batch was written, not only once idle
