"""The event store's own process: the export worker sends it recorded batches over a pipe
(``store_link``), and it writes them (``store.EventStore``), enforces retention and answers each
batch in order. It imports neither the export side nor OpenTelemetry, gRPC or HTTP serving.

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

import select
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import msgspec

from ..spool.record import decode_envelope
from ..store import DerivedRecord, EventStore, Retention, StoreError
from ..telemetry.logs import configure_diagnostics, diagnostics

__all__ = ["CLOSE", "MAX_ROWS_PER_TRANSACTION", "decode_reply", "encode", "ready", "serve", "store_main"]

#: Most rows one transaction takes when batches queue up.
MAX_ROWS_PER_TRANSACTION = 5000
#: How long a transaction waits for more batches after its first: a commit writes every page it
#: changed, so small ones cost most per row (and the queued batches of a busy store go in together anyway).
LINGER_SECONDS = 0.02
#: How often retention is enforced when the previous sweep finished its work.
SWEEP_SECONDS = 5.0
#: ``seq`` of the message that closes the store.
CLOSE = -1
encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(tuple[int, list[bytes], list[DerivedRecord | None]]).decode
decode_reply = msgspec.msgpack.Decoder(tuple[list[int], str | None, dict[str, int]]).decode


def ready(connection: Connection, timeout: float) -> bool:
    """Whether a message waits (``Connection.poll`` builds a selector per call: ~10x the cost)."""
    return bool(select.select([connection.fileno()], [], [], max(0.0, timeout))[0])


def serve(connection: Connection, store: EventStore, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Write what comes over ``connection`` until it closes or asks to close; answer every batch."""
    sweeper = _Sweeper(store, clock)
    try:
        connection.send_bytes(encode(([], None, store.counts())))
        while True:
            if clock() >= sweeper.due and sweeper.sweep():  # (however busy: retention goes on)
                connection.send_bytes(encode(([], None, store.counts())))
            if not ready(connection, sweeper.due - clock()):
                continue
            seqs: list[int] = []
            payloads: list[bytes] = []
            derived: list[DerivedRecord | None] = []
            closing = False
            first = clock()
            while True:
                seq, batch, values = _decode_request(connection.recv_bytes())
                if seq == CLOSE:
                    closing = True
                    break
                seqs.append(seq)
                payloads += batch
                derived += values
                if len(payloads) >= MAX_ROWS_PER_TRANSACTION:
                    break
                if not ready(connection, first + LINGER_SECONDS - clock()):
                    break
            error = _write(store, payloads, derived) if payloads else None
            connection.send_bytes(encode((seqs, error, store.counts())))
            if closing:
                return
    except (EOFError, OSError):
        return  # the export side closed the pipe, or died
    finally:
        store.close()


def _write(
    store: EventStore, payloads: Sequence[bytes], derived: Sequence[DerivedRecord | None]
) -> str | None:
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


def store_main(connection: Connection, path: Path, retention: Retention, log_level: str) -> None:
    """Entry point of the store process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the export process closes the pipe when done
    configure_diagnostics(log_level, "store")
    serve(connection, EventStore(path, retention))
