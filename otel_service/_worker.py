"""The export worker: reads the spool, records telemetry, delivers spans and logs, commits the cursor.

It runs off the request path (a thread, or a child process in production). Delivery is at-least-once:
a batch is committed only after both its spans and its log records were accepted by the collector;
until then it is retried with backoff for as long as it takes, honouring ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import _otlp
from ._instruments import WorkerInstruments
from ._recorder import Recorder
from ._records import Envelope, decode_envelope
from ._sender import Sender
from ._spool import SpoolReader, stats
from ._version import __version__

__all__ = ["ExportStatus", "ExportWorker"]

_POLL_SECONDS = 0.005
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
    dropped: Counter[str] = field(default_factory=Counter)
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "state": self.state,
            "processed": self.processed,
            "exported": dict(self.exported),
            "attempts": self.attempts,
            "failures": self.failures,
            "retries": self.retries,
            "dropped": dict(self.dropped),
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
        }


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
    ) -> None:
        self._reader = reader
        self._recorder = recorder
        self._m = instruments
        self._sender = sender
        self._resource = resource
        self._scope = _otlp.scope("otel_service", __version__)
        self._batch_size = batch_size
        self.status = ExportStatus(enabled=sender is not None)
        self._stop = threading.Event()
        self._deadline: float | None = None
        #: Intake time of the oldest record not yet delivered (None when caught up).
        self.oldest_pending_ns: int | None = None

    # -- control -------------------------------------------------------------------------------

    def run(self) -> None:
        """Work until ``stop`` is called and the spool is drained (or the stop deadline passes)."""
        try:
            while True:
                if not self.step():
                    if self._stop.is_set():
                        break
                    time.sleep(_POLL_SECONDS)
                if self._past_deadline():
                    break
        finally:
            self.status.state = "stopped"

    def stop(self, timeout: float) -> None:
        """Ask ``run`` to drain what it can within ``timeout`` seconds and return."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything spooled so far is delivered and committed (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if stats(self._reader.directory).bytes == 0:
                return True
            time.sleep(0.005)
        return False

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    # -- one batch -----------------------------------------------------------------------------

    def step(self) -> bool:
        """Process one batch; ``False`` when there was nothing to read."""
        payloads, position = self._reader.read(self._batch_size)
        corrupt = self._reader.corrupt_bytes
        if corrupt:
            self._reader.corrupt_bytes = 0
            self._drop("all", "corrupt_spool_bytes", corrupt)
        if not payloads:
            self.oldest_pending_ns = None
            return False
        envelopes: list[Envelope] = []
        for payload in payloads:
            try:
                envelopes.append(decode_envelope(payload))
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._drop("all", "undecodable_record", 1)
        if envelopes:
            self.oldest_pending_ns = envelopes[0].received_ns
        recorded = self._recorder.record(envelopes)
        self.status.processed += len(envelopes)
        if self._sender is not None and envelopes:
            payload_of = {
                "traces": _otlp.traces_request(self._resource, self._scope, recorded.spans),
                "logs": _otlp.logs_request(self._resource, self._scope, recorded.logs),
            }
            counts = {"traces": len(recorded.spans), "logs": len(recorded.logs)}
            if not self._deliver(payload_of, counts):
                return True  # stopping with the batch undelivered: it stays in the spool
        self._reader.commit(position)
        self.status.batches += 1
        return True

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
                if not self._sleep(wait):
                    return False
        self.status.state = "idle"
        return True

    def _sleep(self, seconds: float) -> bool:
        """Sleep before a retry; ``False`` if the stop deadline comes first."""
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= seconds:
                return False
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._past_deadline():
                return False
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return True

    def _drop(self, signal: str, reason: str, count: int) -> None:
        self.status.dropped[reason] += count
        self._m.dropped.add(count, {"signal": signal, "reason": reason})

    def oldest_age(self) -> float:
        """Seconds since the oldest undelivered event was accepted (0 when caught up)."""
        oldest = self.oldest_pending_ns
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e9)

    def spool_json(self) -> dict[str, Any]:
        current = stats(self._reader.directory)
        return {
            "segments": current.segments,
            "bytes": current.bytes,
            "oldest_age_seconds": round(self.oldest_age(), 3),
        }
