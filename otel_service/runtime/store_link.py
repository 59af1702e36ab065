"""The export worker's end of the event store's process (``store_process``): starts it (or, with
``OTELSVC_EXPORT_MODE=thread``, its loop in a thread), sends it batches, takes its answers, and starts
it again when asked. ``export.sink.SinkFeed`` decides when.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..export.recorder import Derived
from ..export.sink import StoreReply
from ..store import EventStore, Retention, status_of
from .store_process import CLOSE, decode_reply, encode, ready, serve, store_main

__all__ = ["StoreLink"]


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
                target=store_main,
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
        self._connection.send_bytes(encode((seq, payloads, derived)))

    def receive(self, timeout: float) -> list[StoreReply]:
        connection = self._connection
        if connection is None:
            raise BrokenPipeError("the store link is closed")
        replies: list[StoreReply] = []
        try:
            waiting = ready(connection, timeout)
            while waiting:
                seqs, error, counts = decode_reply(connection.recv_bytes())
                self._counts = counts
                replies += (StoreReply(seq, error) for seq in seqs)
                waiting = ready(connection, 0.0)
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
                self._connection.send_bytes(encode((CLOSE, [], [])))
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
