"""The event store: schema, idempotent writes, retention by age and size with counts, failures, reads."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from otel_service.export.recorder import Derived
from otel_service.model.events import Event
from otel_service.spool.record import Envelope
from otel_service.store import (
    AnalyticsReader,
    EventStore,
    Retention,
    Slice,
    StoreError,
    StoreTimeout,
    status_of,
)
from otel_service.store.lookup import find, sql
from otel_service.store.schema import COLUMNS, KIND_COLUMNS, MINUTE_NS, row_of
from otel_service.testing import OtlpReceiver

from .conftest import StartApp, point_values

#: The lab's ai_metrics columns (seeds/000, CREATE TABLE ai_metrics), with user_satisfaction from its
#: MetricsData interface.
LAB_COLUMNS = [
    "id", "business_id", "conversation_id", "session_id", "response_time_ms", "success_rate",
    "tokens_used", "prompt_tokens", "completion_tokens", "api_cost_usd", "model_name",
    "intent_detected", "appointment_requested", "human_handoff_requested", "appointment_booked",
    "user_message_length", "ai_response_length", "response_type", "user_satisfaction", "created_at",
]  # fmt: skip
SECOND = 1_000_000_000
DAY = 86_400 * SECOND
NO_BOUNDS = Retention(max_age_ns=0, max_bytes=0)


def _envelope(n: int, *, at_ns: int | None = None, **event: Any) -> Envelope:
    fields = (
        event if "kind" in event else {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 100, **event}
    )
    now = time.time_ns() if at_ns is None else at_ns
    return Envelope(
        event=msgspec.convert(fields, Event),
        trace_id=f"{n + 1:032x}",
        span_id=f"{n + 1:016x}",
        parent_span_id=None,
        correlation_id=f"c-{n}",
        end_ns=now,
        received_ns=now,
        source="events",
    )


def _batch(first: int, count: int, **event: Any) -> tuple[list[Envelope], list[Derived | None]]:
    envelopes = [_envelope(n, **event) for n in range(first, first + count)]
    return envelopes, [Derived("openai", 10, 0.5, "reported")] * count


def _rows(path: Path, where: str = "") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            f"SELECT correlation_id FROM events {where} ORDER BY correlation_id"
        ).fetchall()


def _used(path: Path) -> int:
    """The size of the database's pages in use (free pages aside)."""
    with sqlite3.connect(path) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * connection.execute("PRAGMA page_size").fetchone()[0])


def _size(path: Path) -> int:
    """The database's size in pages (what the file holds once the write-ahead log is checkpointed)."""
    with sqlite3.connect(path) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * connection.execute("PRAGMA page_size").fetchone()[0])


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return EventStore(tmp_path / "store" / "events.sqlite", NO_BOUNDS)


def test_the_schema_has_the_table_its_indexes_and_the_lab_view(store: EventStore) -> None:
    """The table has every column, WAL, indexes by time, business, correlation and trace, and ai_metrics."""
    store.write(*_batch(0, 1))
    with sqlite3.connect(store.path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(events)")]
        listed = connection.execute("PRAGMA index_list(events)").fetchall()
        names = [row[1] for row in listed]
        partial = {row[1] for row in listed if row[4]}
        indexes = {name: [c[2] for c in connection.execute(f"PRAGMA index_info({name})")] for name in names}
        lab = [d[0] for d in connection.execute("SELECT * FROM ai_metrics").description]
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert columns == [name for name, _, _ in COLUMNS]
    assert sorted(indexes.values()) == sorted(
        [
            ["time_unix_ns"],
            ["business_id", "time_unix_ns"],
            ["received_minute", "correlation_id"],
            ["received_minute", "trace_id", "span_id"],
        ]
    )
    assert partial == {"idx_events_correlation"}  # (correlation IDs that are their trace ID: by the key)
    assert lab == LAB_COLUMNS
    assert mode == "wal"


def test_the_store_is_the_owners_only(tmp_path: Path) -> None:
    """The database and its log files are 0600, a directory made for them 0700, whatever the umask."""
    old = os.umask(0)
    try:
        store = EventStore(tmp_path / "new" / "events.sqlite", NO_BOUNDS)
        store.write(*_batch(0, 1))
    finally:
        os.umask(old)
    directory = store.path.parent
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (directory, *directory.iterdir())}
    files = ("events.sqlite", "events.sqlite-wal", "events.sqlite-shm")
    assert modes == {"new": 0o700, **dict.fromkeys(files, 0o600)}
    store.close()


@pytest.mark.parametrize(
    "event",
    [
        {"kind": "llm_call", "model": "m", "duration_ms": 1, "attributes": {"a": 1}},
        {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 1, "features": {"f": 1.0}},
        {"kind": "feedback", "model": "m", "model_version": "1", "correct": False},
    ],
    ids=["llm_call", "prediction", "feedback"],
)
def test_each_kind_fills_one_value_per_column(event: dict[str, Any]) -> None:
    """Every event kind gives one value per column of its own, with its kind, model, IDs and JSON."""
    kind, values = row_of(_envelope(0, **event), None)
    row = dict(zip(KIND_COLUMNS[kind], values, strict=True))
    assert (row["kind"], row["model"], row["trace_id"], row["span_id"]) == (
        event["kind"],
        "m",
        f"{1:032x}",
        f"{1:016x}",
    )
    assert row["attributes"] in (None, '{"a":1}')


def test_every_column_is_some_kinds() -> None:
    """The kinds' columns are columns of the table, and together they are all of them."""
    names = {name for name, _, _ in COLUMNS}
    assert set().union(*KIND_COLUMNS.values()) == names
    assert all(len(set(columns)) == len(columns) for columns in KIND_COLUMNS.values())


def test_the_lab_view_reads_as_the_labs_table(store: EventStore) -> None:
    """A /track-style call reads back through ai_metrics under the lab's names, success_rate included."""
    envelope = _envelope(
        0,
        business_id="acme",
        duration_ms=900.5,
        input_tokens=40,
        output_tokens=60,
        total_tokens=100,
        intent="booking",
        human_handoff=True,
        response_length=380,
    )
    store.write([envelope], [Derived("openai", 100, 0.25, "reported")])
    with sqlite3.connect(store.path) as connection:
        connection.row_factory = sqlite3.Row
        row = dict(connection.execute("SELECT * FROM ai_metrics").fetchone())
    assert row["id"] == f"{1:032x}{1:016x}"
    assert (row["response_time_ms"], row["tokens_used"], row["prompt_tokens"]) == (900.5, 100, 40)
    assert (row["api_cost_usd"], row["intent_detected"], row["human_handoff_requested"]) == (
        0.25,
        "booking",
        1,
    )
    assert (row["ai_response_length"], row["success_rate"]) == (380, 1.0)
    assert row["created_at"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(envelope.end_ns // 10**9)) + (
        f".{envelope.end_ns // 10**3 % 10**6:06d}Z"
    )


def test_writes_are_idempotent_by_event_id(store: EventStore) -> None:
    """A batch written again (a replay after a crash) adds nothing; one overlapping it adds the rest."""
    assert store.write(*_batch(0, 5)) == 5
    assert store.write(*_batch(0, 5)) == 0
    assert store.write(*_batch(3, 4)) == 2
    assert len(_rows(store.path)) == 7
    assert store.counts() == {"written": 7, "expired": 0, "evicted_for_size": 0}


def test_counts_are_kept_in_the_store_across_reopening(store: EventStore) -> None:
    """Row counts live in the file itself: a new writer on it carries on from them."""
    store.write(*_batch(0, 3))
    store.close()
    again = EventStore(store.path, NO_BOUNDS)
    again.write(*_batch(3, 2))
    assert again.counts()["written"] == 5
    assert status_of(again.path, again.counts())["rows"] == 5


def test_retention_by_age_deletes_old_rows_in_chunks_and_counts_them(tmp_path: Path) -> None:
    """Rows older than the age bound go, a bounded chunk per sweep, each counted as expired."""
    now = 100 * DAY
    store = EventStore(
        tmp_path / "e.sqlite", Retention(max_age_ns=7 * DAY, max_bytes=0, chunk_rows=4), clock=lambda: now
    )
    old = [_envelope(n, at_ns=now - 8 * DAY + n) for n in range(10)]
    young = [_envelope(n, at_ns=now - 6 * DAY) for n in range(10, 13)]
    store.write(old + young, [None] * 13)
    sweeps = [store.sweep() for _ in range(4)]
    assert [(s.expired, s.done) for s in sweeps] == [(4, False), (4, False), (2, True), (0, True)]
    assert _rows(store.path) == [("c-10",), ("c-11",), ("c-12",)]
    assert store.counts() == {"written": 13, "expired": 10, "evicted_for_size": 0}


def test_retention_by_size_evicts_the_oldest_rows_and_counts_them(tmp_path: Path) -> None:
    """Beyond the size bound the oldest rows go until pages in use fit, each counted; freed pages reused."""
    path = tmp_path / "e.sqlite"
    store = EventStore(path, Retention(max_age_ns=0, max_bytes=256 << 10, chunk_rows=100))
    base = time.time_ns()
    filler = "x" * 400
    for batch in range(10):
        envelopes = [
            _envelope(n, at_ns=base + n, attributes={"pad": filler})
            for n in range(batch * 200, (batch + 1) * 200)
        ]
        store.write(envelopes, [None] * len(envelopes))
    before = _size(path)
    sweeps = 0
    while not store.sweep().done:
        sweeps += 1
        assert sweeps < 100
    with sqlite3.connect(path) as connection:
        kept = [
            row[0] for row in connection.execute("SELECT correlation_id FROM events ORDER BY time_unix_ns")
        ]
    assert _used(path) <= 256 << 10 < before
    assert 0 < len(kept) < 2000
    assert store.counts()["evicted_for_size"] == 2000 - len(kept)
    assert kept == [f"c-{n}" for n in range(2000 - len(kept), 2000)]  # the newest stay
    # As many rows again go into the pages retention freed: the file does not grow.
    grown = _size(path)
    for batch in range(10, 20):
        envelopes = [
            _envelope(n, at_ns=base + n, attributes={"pad": filler})
            for n in range(batch * 200, (batch + 1) * 200)
        ]
        store.write(envelopes, [None] * len(envelopes))
        while not store.sweep().done:
            pass
    assert _size(path) <= grown
    assert _used(path) <= 256 << 10


def test_a_full_disk_fails_the_batch_whole_and_the_store_recovers(store: EventStore) -> None:
    """A write the disk cannot take raises StoreError and stores none of its rows; later writes succeed."""
    store.write(*_batch(0, 1))
    connection = store._open()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: SQLITE_FULL
    big = [_envelope(n, attributes={"pad": "y" * 4000}) for n in range(1, 50)]
    with pytest.raises(StoreError, match="full"):
        store.write(big, [None] * len(big))
    assert len(_rows(store.path)) == 1
    assert store.counts()["written"] == 1
    assert store.write(big, [None] * len(big)) == 49  # (a new connection: no page limit)
    assert len(_rows(store.path)) == 50


def test_a_path_that_cannot_be_created_fails_each_write(tmp_path: Path) -> None:
    """A store whose directory cannot be made raises StoreError on each write, and works once it can be."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = EventStore(blocker / "events.sqlite", NO_BOUNDS)
    for _ in range(2):
        with pytest.raises(StoreError):
            store.write(*_batch(0, 1))
    blocker.unlink()
    assert store.write(*_batch(0, 1)) == 1


def test_reading_a_store_that_does_not_exist_answers_zeros(tmp_path: Path) -> None:
    """Before the first event is stored the figures are zeros, not an error."""
    figures = AnalyticsReader(tmp_path / "missing.sqlite").read(Slice("acme"))
    assert figures["requests"] == {"total": 0, "successful": 0, "failed": 0, "success_rate": None}
    assert figures["events"] == {"llm_call": 0, "prediction": 0, "feedback": 0}
    assert not (tmp_path / "missing.sqlite").exists()


def test_the_reader_sees_one_snapshot_and_never_writes(store: EventStore) -> None:
    """A reader runs while the writer writes (WAL) and its connection refuses to modify anything."""
    store.write(*_batch(0, 3))
    reader = AnalyticsReader(store.path)
    assert reader.read(Slice())["requests"]["total"] == 3
    store.write(*_batch(3, 2))
    assert reader.read(Slice())["requests"]["total"] == 5
    ro = sqlite3.connect(store.path.resolve().as_uri() + "?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM events")
    ro.close()


def test_a_query_past_its_deadline_is_stopped(store: EventStore) -> None:
    """A query that runs longer than its timeout is interrupted: StoreTimeout, not a stuck thread."""
    store.write(*_batch(0, 3000))
    with pytest.raises(StoreTimeout):
        AnalyticsReader(store.path, timeout=0.0).read(Slice(), "hour")


def test_token_counts_beyond_64_bits_are_stored_and_summed(store: EventStore) -> None:
    """Calls at the int64 token bound are stored (a total beyond it as a double) and summed."""
    huge = 2**63 - 1
    envelopes = [_envelope(n, input_tokens=huge, output_tokens=huge) for n in range(2)]
    assert store.write(envelopes, [Derived("openai", 2 * huge, None, "unpriced")] * 2) == 2
    figures = AnalyticsReader(store.path).read(Slice())
    assert figures["tokens"]["total"] == pytest.approx(4.0 * huge)
    assert figures["tokens"]["input"] == pytest.approx(2.0 * huge)
    assert figures["cost_usd"]["unpriced_calls"] == 2


async def test_a_store_that_cannot_be_written_never_stops_export(
    receiver: OtlpReceiver, start_app: StartApp, tmp_path: Path
) -> None:
    """With the store's path unusable, every span, log and metric still arrives; the events are counted."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    app = await start_app(
        OTELSVC_STORE_PATH=str(blocker / "events.sqlite"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    events = [{"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "business_id": "b"}] * 30
    assert (await (await app.client.post("/v1/events", json=events)).json())["accepted"] == 30
    assert app.caught_up()
    receiver.wait_for_spans(30, 10)
    receiver.wait_for_logs(30, 10)
    export = (await (await app.client.get("/health/detailed")).json())["export"]
    assert export["dropped"] == {"store_unwritable": 30}
    assert export["exported"] == {"traces": 30, "logs": 30}
    assert point_values(app.metrics(), "gen_ai.client.operation.duration")
    metrics = (await (await app.client.get("/metrics")).read()).decode()
    dropped = [line for line in metrics.splitlines() if line.startswith("otel_service_dropped_total{")]
    assert [line.rsplit(" ", 1)[1] for line in dropped if 'reason="store_unwritable"' in line] == ["30.0"]


@pytest.mark.parametrize("by", ["correlation_id", "trace_id"])
def test_a_lookup_by_id_finds_its_rows_across_minutes_by_index(store: EventStore, by: str) -> None:
    """Rows of one ID received minutes apart are all found, each minute by index seeks, never a scan."""
    base = 1_800_000_000 * 10**9
    x = "ab" * 16
    envelopes = []
    for n in range(12):
        e = msgspec.structs.replace(_envelope(n), received_ns=base + n * 7 * MINUTE_NS)
        if n % 3 == 0:  # this request's: its trace, and the correlation ID is the trace ID or its own
            e = msgspec.structs.replace(e, trace_id=x, correlation_id=x if n % 2 else "c-x")
        envelopes.append(e)
    store.write(envelopes, [None] * len(envelopes))
    value = x if by == "trace_id" else "c-x"
    expected = [0, 3, 6, 9] if by == "trace_id" else [0, 6]
    with sqlite3.connect(store.path) as connection:
        found = find(connection, by, value, ("span_id", "correlation_id"))
        statement, times = sql(by, ("span_id",))
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", (value,) * times)]
        if by == "correlation_id":  # the events whose correlation ID is their trace ID, by the trace
            assert [r["span_id"] for r in find(connection, by, x, ("span_id",))] == [
                envelopes[n].span_id for n in (3, 9)
            ]
    assert [row["span_id"] for row in found] == [envelopes[n].span_id for n in expected]
    searches = [step for step in plan if step.startswith("SEARCH e USING INDEX")]
    assert any("sqlite_autoindex_events_1 (received_minute=? AND trace_id=?)" in s for s in searches), plan
    if by == "correlation_id":
        assert any(
            "idx_events_correlation (received_minute=? AND correlation_id=?)" in s for s in searches
        ), plan
    assert not any(step.startswith("SCAN e") for step in plan), plan


def test_a_store_file_of_an_older_schema_is_refused_by_name_and_left_as_it_is(tmp_path: Path) -> None:
    """A file made by an earlier (unreleased) schema is not written into: its writes fail, saying why."""
    path = tmp_path / "events.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE events (trace_id TEXT, span_id TEXT, PRIMARY KEY (trace_id, span_id))"
        )
    with pytest.raises(StoreError, match=r"schema 0 .* move it away"):
        EventStore(path, NO_BOUNDS).write(*_batch(0, 1))
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
