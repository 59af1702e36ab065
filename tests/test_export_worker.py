"""The export worker's delivery thread: the next batch is recorded while one is sent, in spool order."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_service.config import Settings
from otel_service.export.sender import Sender, SendResult
from otel_service.export.worker import ExportWorker
from otel_service.runtime.export_host import wire_export
from otel_service.spool import Cursor, Position, SpoolWriter, end_position
from otel_service.spool.cursor import write_cursor
from otel_service.spool.record import encode_envelope

from .conftest import envelope


class GatedSender:
    """Holds the first request until released; records what it was sent."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[tuple[str, bytes]] = []

    def send(self, signal: str, payload: bytes) -> SendResult:
        self.release.wait(10)
        self.sent.append((signal, payload))
        return SendResult(True)

    def close(self) -> None:
        pass


def _trace_ids(payload: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(payload)
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    return [span.trace_id.hex() for span in spans]


def _wait(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _worker(spool: Path, records: int, sender: Sender, log: io.BytesIO) -> ExportWorker:
    """An export worker over a spool of ``records`` LLM calls, in batches of 4, sending with ``sender``."""
    SpoolWriter(spool).append([encode_envelope(envelope(n)) for n in range(records)])
    settings = Settings.from_env(
        {
            "OTELSVC_SPOOL_DIR": str(spool),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "4",
            "OTEL_BSP_SCHEDULE_DELAY": "0",
        }
    )
    return wire_export(settings, log_stream=log, sender=sender).worker


def test_the_next_batch_is_recorded_while_one_is_being_sent_and_delivery_keeps_spool_order(
    tmp_path: Path,
) -> None:
    """Batch 2 is recorded while batch 1 waits for its answer; the cursor passes each only once sent."""
    sender = GatedSender()
    log = io.BytesIO()
    worker = _worker(tmp_path, 8, sender, log)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        end = end_position(tmp_path)
        assert _wait(lambda: worker.recorded_to() >= end)  # both batches recorded...
        assert sender.sent == []  # ...while the first is still unanswered
        assert log.getvalue().count(b"\n") == 8
        assert not worker.caught_up()
        assert worker.status.to_json()["exported"] == {}
        sender.release.set()
        assert _wait(worker.caught_up)
    finally:
        sender.release.set()
        worker.stop(5)
        thread.join(10)
    assert [signal for signal, _ in sender.sent] == ["traces", "logs", "traces", "logs"]
    traces = [_trace_ids(payload) for signal, payload in sender.sent if signal == "traces"]
    assert traces == [[f"{n + 1:032x}" for n in range(4)], [f"{n + 1:032x}" for n in range(4, 8)]]
    assert worker.status.to_json()["exported"] == {"traces": 8, "logs": 8}
    assert worker.queued_items() == 0


class BrokenSender(GatedSender):
    """A sender with a bug: every send raises."""

    def send(self, signal: str, payload: bytes) -> SendResult:
        raise ValueError("bug")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_delivery_thread_that_dies_ends_the_worker_instead_of_hanging(tmp_path: Path) -> None:
    """A bug in delivery ends ``run`` (readiness then reports the export worker down); nothing moves."""
    worker = _worker(tmp_path, 12, BrokenSender(), io.BytesIO())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    alive = thread.is_alive()
    worker.stop(1)
    thread.join(5)
    assert not alive
    assert [str(e) for e in errors] == ["the delivery thread ended"]
    assert not worker.caught_up()
    assert worker.status.to_json()["exported"] == {}


def test_a_checkpoint_taken_while_counted_events_are_read_again_keeps_its_position(tmp_path: Path) -> None:
    """A checkpoint taken while counted events are read again still covers them: no double count."""
    SpoolWriter(tmp_path).append([encode_envelope(envelope(n)) for n in range(8)])
    settings = Settings.from_env({"OTELSVC_SPOOL_DIR": str(tmp_path), "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"})

    def run(steps: int) -> float:
        parts = wire_export(settings, log_stream=io.BytesIO())
        for _ in range(steps):
            parts.worker.step()
        parts.worker.checkpoint()
        parts.worker.close()
        return sum(total for _, total in parts.metrics.aggregates.dump()["counters"]["ai_requests"])

    assert run(2) == 8
    start = Position(1, 0)
    write_cursor(tmp_path, Cursor(delivered=start, metrics=end_position(tmp_path), inflight=start))
    assert run(1) == 8  # half of them read again, not counted again, and a checkpoint taken then
    assert run(2) == 8
