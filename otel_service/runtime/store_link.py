"""The event store's own process: the export worker sends it each recorded batch over a pipe, and it
writes them (``store.EventStore``), enforces retention and answers each batch in order.

Why a process: a row and its indexes cost about as much CPU per event as the rest of export; in the
export worker's thread they halved its throughput, and in a thread beside it SQLite's work still
waits for the interpreter lock (which every statement gives up and takes back). Here it runs beside
export, and batches that queue up while a transaction commits are written together in the next one
(up to ``MAX_ROWS_PER_TRANSACTION``), so a busy store commits less often.

The process ends when its pipe closes (the export process stopped or died); it ignores SIGINT and
SIGTERM, so a stop signalled to the whole process group lets export finish its answers first.
``OTELSVC_EXPORT_MODE=thread`` (tests) runs the same loop in a thread instead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from ..export.recorder import Derived
from ..export.sink import StoreReply
from ..spool.record import decode_envelope
from ..store import EventStore, Retention, StoreError, status_of
from ..telemetry.logs import configure_diagnostics, diagnostics

__all__ = ["MAX_ROWS_PER_TRANSACTION", "StoreLink", "serve"]

#: Most rows one transaction takes when batches queue up.
MAX_ROWS_PER_TRANSACTION = 5000
#: How long a transaction waits for more batches after its first: a commit writes every page it
#: changed, so small ones cost most per row (and the queued batches of a busy store go in together anyway).
LINGER_SECONDS = 0.02
#: How often retention is enforced when the previous sweep finished its work.
SWEEP_SECONDS = 5.0
#: ``seq`` of the message that closes the store.
_CLOSE = -1
_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(tuple[int, list[bytes], list[Derived | None]]).decode
_decode_reply = msgspec.msgpack.Decoder(tuple[list[int], str | None, dict[str, int]]).decode


def _ready(connection: Connection, timeout: float) -> bool:
    """Whether a message waits (``Connection.poll`` builds a selector per call: ~10x the cost)."""
    return bool(select.select([connection.fileno()], [], [], max(0.0, timeout))[0])


def serve(connection: Connection, store: EventStore, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Write what comes over ``connection`` until it closes or asks to close; answer every batch."""
    sweeper = _Sweeper(store, clock)
    try:
        connection.send_bytes(_encode(([], None, store.counts())))
        while True:
            if clock() >= sweeper.due and sweeper.sweep():  # (however busy: retention goes on)
                connection.send_bytes(_encode(([], None, store.counts())))
            if not _ready(connection, sweeper.due - clock()):
                continue
            seqs: list[int] = []
            payloads: list[bytes] = []
            derived: list[Derived | None] = []
            closing = False
            first = clock()
            while True:
                seq, batch, values = _decode_request(connection.recv_bytes())
                if seq == _CLOSE:
                    closing = True
                    break
                seqs.append(seq)
                payloads += batch
                derived += values
                if len(payloads) >= MAX_ROWS_PER_TRANSACTION:
                    break
                if not _ready(connection, first + LINGER_SECONDS - clock()):
                    break
            error = _write(store, payloads, derived) if payloads else None
            connection.send_bytes(_encode((seqs, error, store.counts())))
            if closing:
                return
    except (EOFError, OSError):
        return  # the export side closed the pipe, or died
    finally:
        store.close()


def _write(store: EventStore, payloads: Sequence[bytes], derived: Sequence[Derived | None]) -> str | None:
    try:
        store.write([decode_envelope(payload) for payload in payloads], derived)
    except StoreError as exc:
        return str(exc)
    except Exception as exc:  # a record the worker decoded cannot fail here; kept whole regardless
        return repr(exc)
    return None


class _Sweeper:
    """Retention, every ``SWEEP_SECONDS``, and at once again while a sweep leaves work to do."""

    def __init__(self, store: EventStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self.due = clock()
        self._failing = False

    def sweep(self) -> bool:
        """One chunk; whether it deleted anything."""
        now = self._clock()
        try:
            swept = self._store.sweep()
        except StoreError as exc:
            self.due = now + SWEEP_SECONDS
            if not self._failing:
                self._failing = True
                diagnostics().warning("store_retention_failed", error=str(exc), action="tried again")
            return False
        if self._failing:
            self._failing = False
            diagnostics().info("store_retention_recovered")
        self.due = now if not swept.done else now + SWEEP_SECONDS
        return bool(swept.expired or swept.evicted_for_size)


def _store_main(connection: Connection, path: Path, retention: Retention, log_level: str) -> None:
    """Entry point of the store process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the export process closes the pipe when done
    configure_diagnostics(log_level, "store")
    serve(connection, EventStore(path, retention))


class StoreLink:
    """The export worker's end: starts the store process (or thread), sends batches, takes answers."""

    def __init__(self, path: Path, retention: Retention, *, log_level: str, in_thread: bool = False) -> None:
        self.path = path
        self._retention = retention
        self._log_level = log_level
        self._in_thread = in_thread
        self._connection: Connection | None = None
        self._host: multiprocessing.process.BaseProcess | threading.Thread | None = None
        #: The store's own row counts (``store_counts``), as of its last answer.
        self._counts = {"written": 0, "expired": 0, "evicted_for_size": 0}
        self.start()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        if self._in_thread:
            store = EventStore(self.path, self._retention)
            self._host = threading.Thread(target=serve, args=(theirs, store), name="otel-store", daemon=True)
        else:
            self._host = context.Process(
                target=_store_main,
                args=(theirs, self.path, self._retention, self._log_level),
                name="otel-service-store",
                daemon=True,
            )
        self._host.start()
        if not self._in_thread:
            theirs.close()  # (ours sees the end of the pipe when the process ends)
        self._connection = ours

    def send(self, seq: int, payloads: Sequence[bytes], derived: Sequence[Derived | None]) -> None:
        if self._connection is None:
            raise BrokenPipeError("the store link is closed")
        self._connection.send_bytes(_encode((seq, payloads, derived)))

    def receive(self, timeout: float) -> list[StoreReply]:
        connection = self._connection
        if connection is None:
            raise BrokenPipeError("the store link is closed")
        replies: list[StoreReply] = []
        try:
            ready = _ready(connection, timeout)
            while ready:
                seqs, error, counts = _decode_reply(connection.recv_bytes())
                self._counts = counts
                replies += (StoreReply(seq, error) for seq in seqs)
                ready = _ready(connection, 0.0)
        except EOFError as exc:
            raise BrokenPipeError("the store process ended") from exc
        return replies

    def restart(self) -> None:
        self._stop_host(0.0)
        self.start()

    def close(self, timeout: float) -> None:
        """Ask the store to finish what it has, and wait ``timeout`` seconds at most."""
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send_bytes(_encode((_CLOSE, [], [])))
        self._stop_host(timeout)

    def _stop_host(self, timeout: float) -> None:
        host, connection = self._host, self._connection
        self._host = self._connection = None
        if host is not None:
            host.join(timeout)
            if isinstance(host, multiprocessing.process.BaseProcess) and host.is_alive():
                host.kill()
                host.join(1.0)
        if connection is not None:
            connection.close()

    # -- what /metrics and /health/detailed show ------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows written, expired and evicted for size, ever (kept in the store itself)."""
        return dict(self._counts)

    def status(self) -> dict[str, Any]:
        """Where it is, its size on disk (with its log), its rows."""
        return status_of(self.path, self._counts)
