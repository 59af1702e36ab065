"""Several intake processes on one port (``OTELSVC_INTAKE_PROCESSES``), for more events/s on more cores.

The first process (``IntakeGroup``, here) binds the port with SO_REUSEPORT, starts the others
(``intake_process``) and replaces any that dies. Each other process binds the same port, so the kernel
spreads connections over all of them; it validates and spools events into its own shard, which the
first process copies into the main spool (``spool.shards``), and publishes its counters there every
``PUBLISH_SECONDS``. The status endpoints (``/metrics``, ``/ready``, ``/health/detailed``) are answered
by the first process only, with every process's counters summed: the others forward them over a unix
socket, so a scrape sees the same monotonic counters whichever process it reaches. Only the first
process pushes the intake's metrics over OTLP. Rate limits apply per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections import Counter
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Settings
from ..intake.accept import IntakeStats
from ..intake.counts import read_counts
from ..intake.server import Handler
from ..spool import SpoolWriter, writer_active
from ..spool.shards import ShardMerger, forget_published, read_published, shard_dir
from ..telemetry.logs import diagnostics
from .intake_process import run_intake_process
from .loop import CannotListen
from .wiring import intake_spools

__all__ = ["IntakeGroup", "request_grace"]

_MERGE_SECONDS = 0.01
_WATCH_SECONDS = 0.5
_START_TIMEOUT = 30.0
#: After its requests' grace, how long an intake process has to close its shard and exit before it is
#: killed.
_EXIT_SECONDS = 1.0
_log = diagnostics()


def request_grace(settings: Settings) -> float:
    """How long each intake process waits for its requests in progress once it stops listening: half
    the shutdown timeout, the other half is the export side's. (aiohttp waits that long for them, then
    at most as long again for the handlers it cancelled: an intake process is done by the deadline
    however its clients behave.)"""
    return settings.shutdown_timeout / 2


def _others(settings: Settings) -> range:
    return range(1, settings.intake_processes)


class IntakeGroup:
    """In the first intake process: the other intake processes, their shards and their counters."""

    def __init__(self, settings: Settings, writer: SpoolWriter, stats: IntakeStats) -> None:
        self._settings = settings
        self._writer = writer
        #: This process's own counters.
        self.own_stats = stats
        #: What the other processes run with: their server's shutdown timeout is the requests' grace.
        self._child_settings = dataclasses.replace(settings, shutdown_timeout=request_grace(settings))
        self._socket = settings.spool_dir / "intake.sock"
        self._processes: dict[int, BaseProcess] = {}
        self._restarts: Counter[int] = Counter()
        #: Shards of this run's processes, and any left by an earlier run with more of them.
        self._shards = intake_spools(settings)[1:]
        self.merger = ShardMerger(writer, self._shards)
        self._fsync = settings.spool_fsync != "never"
        self._merging: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._status_runner: web.ServerRunner | None = None
        self._port = settings.port
        self._started = False

    @property
    def shards(self) -> list[Path]:
        """The shards copied into the main spool (this run's processes', and any left over)."""
        return self._shards

    def __len__(self) -> int:
        """How many intake processes besides this one."""
        return len(_others(self._settings))

    # -- lifecycle -----------------------------------------------------------------------------

    def start_merging(self) -> None:
        """Copy shards into the main spool from now on (also what an earlier run left behind)."""
        if self._merging is None and self._shards:
            self._merging = asyncio.create_task(self._merge_every(_MERGE_SECONDS))

    async def wait_for_predecessors(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for intake processes of an earlier run that still write a
        shard: orphans of a first process that was killed, which stop within ``PUBLISH_SECONDS`` and
        free the port and their shards once their requests are done."""
        deadline = time.monotonic() + timeout
        while any(writer_active(shard) for shard in self._shards):
            if time.monotonic() > deadline:
                return  # whatever still holds them is reported when it gets in the way
            await asyncio.sleep(0.05)

    async def start(self, port: int, status_handler: Handler) -> None:
        """Serve the status endpoints on the unix socket, start the other processes on ``port`` and wait
        until each listens. Raises ``CannotListen`` if one cannot."""
        if not len(self):
            return
        self._port = port
        # Its clients are the other intake processes, gone when it is cleaned up: no grace to give.
        self._status_runner = web.ServerRunner(
            web.Server(status_handler, access_log=None), shutdown_timeout=0.1
        )
        await self._status_runner.setup()
        self._socket.unlink(missing_ok=True)
        await web.UnixSite(self._status_runner, str(self._socket)).start()
        os.chmod(self._socket, 0o600)
        for index in _others(self._settings):
            forget_published(shard_dir(self._settings.spool_dir, index))
            self._spawn(index)
        for index in _others(self._settings):
            await self._until_listening(index)
        self._watching = asyncio.create_task(self._watch())
        self._started = True

    def _spawn(self, index: int) -> None:
        process = get_context("spawn").Process(
            target=run_intake_process,
            args=(self._child_settings, index, self._port, self._socket, os.getpid()),
            name=f"otel-service-intake-{index}",
            daemon=False,
        )
        process.start()
        self._processes[index] = process

    async def _until_listening(self, index: int) -> None:
        process = self._processes[index]
        deadline = time.monotonic() + _START_TIMEOUT
        while (read_published(shard_dir(self._settings.spool_dir, index)) or {}).get("pid") != process.pid:
            if not process.is_alive() or time.monotonic() > deadline:
                raise CannotListen(f"intake process {index} did not start (exit code {process.exitcode})")
            await asyncio.sleep(0.02)

    async def _watch(self) -> None:
        """Replace an intake process that died (killed, crashed): its shard stays and is copied on."""
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            for index, process in list(self._processes.items()):
                if not process.is_alive():
                    code = process.exitcode
                    _log.warning(
                        "intake_process_exited", index=index, exit_code=code, action="starting it again"
                    )
                    self._restarts[index] += 1
                    self._spawn(index)

    async def _merge_every(self, seconds: float) -> None:
        while True:
            await self._merge()
            await asyncio.sleep(seconds)

    async def _merge(self) -> int:
        """One copy of every shard; 0 when nothing was copied. A failure to write the main spool
        (disk full) is logged and tried again later: the events wait in their shards meanwhile."""
        try:
            copied = self.merger.copy()
            if copied and self._fsync:
                await asyncio.to_thread(self._writer.sync)
            self.merger.commit()
        except OSError as exc:
            _log.warning(
                "shard_copy_failed", error=exc.strerror, action="events wait in their shards; tried again"
            )
            return 0
        return copied

    async def stop(self, deadline: float) -> None:
        """Stop the other processes (each stops listening and finishes its requests within
        ``request_grace``), then close the status socket. A process still running then (and a moment
        to exit), or at ``deadline`` (a ``time.monotonic()`` value), is killed: its shard keeps what
        it accepted."""
        if self._watching is not None:
            self._watching.cancel()
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: a graceful stop
        kill_at = min(deadline, time.monotonic() + request_grace(self._settings) + _EXIT_SECONDS)
        for process in self._processes.values():
            await asyncio.to_thread(process.join, max(0.0, kill_at - time.monotonic()))
        for index, process in self._processes.items():
            if process.is_alive():
                _log.warning("intake_process_killed", index=index, reason="not stopped in time")
                process.kill()
        for process in self._processes.values():
            await asyncio.to_thread(process.join, 1)
        if self._status_runner is not None:
            await self._status_runner.cleanup()
            self._socket.unlink(missing_ok=True)

    async def finish_merging(self, deadline: float) -> None:
        """Copy what the shards still hold (after ``stop``), until ``deadline`` (a ``time.monotonic()``
        value) at the latest, then stop copying: what is left waits in the shards for the next start."""
        if self._merging is not None:
            self._merging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._merging
            self._merging = None
        while time.monotonic() < deadline and await self._merge():
            pass
        self.merger.close()

    def problems(self) -> list[str]:
        """Why the intake is not at full strength: processes still starting, or not running."""
        if len(self) and not self._started:
            return ["intake processes starting"]
        dead = [index for index, process in sorted(self._processes.items()) if not process.is_alive()]
        return [f"intake process {index} not running" for index in dead]

    # -- counters ------------------------------------------------------------------------------

    def _published(self) -> dict[int, dict[str, Any]]:
        found = {}
        for index in _others(self._settings):
            data = read_published(shard_dir(self._settings.spool_dir, index))
            if data is not None:
                found[index] = data
        return found

    def published_durations(self) -> list[Any]:
        """The other processes' request-duration histograms (``FastHistogram.dump``), as published."""
        return [data["durations"] for data in self._published().values()]

    def stats(self) -> IntakeStats:
        """Every intake process's counters together: event counts read from their files (exact, even
        for a process just killed), request counts as last published."""
        total = self.own_stats
        for shard in self._shards:
            data = read_published(shard)
            other = IntakeStats.load(data["stats"]) if data else IntakeStats()
            other.received, other.rejected = read_counts(shard)
            total = total.plus(other)
        return total

    def processes(self) -> list[dict[str, Any]]:
        """Each intake process: index, pid, alive, restarts, requests (as last published)."""
        own = {
            "index": 0,
            "pid": os.getpid(),
            "alive": True,
            "restarts": 0,
            "requests": self.own_stats.requests,
        }
        rows: list[dict[str, Any]] = [own]
        published = self._published()
        for index, process in sorted(self._processes.items()):
            data = published.get(index)
            rows.append(
                {
                    "index": index,
                    "pid": process.pid,
                    "alive": process.is_alive(),
                    "restarts": self._restarts[index],
                    "requests": data["stats"]["requests"] if data else 0,
                }
            )
        return rows

    def shard_counts(self) -> dict[str, int]:
        """What copying shards did: records copied; after a crash, found already copied (skipped) or
        copied again without knowing (possible duplicates); corrupt bytes skipped."""
        merger = self.merger
        return {
            "copied": merger.copied,
            "already_copied": merger.skipped,
            "possible_duplicate": merger.duplicates,
            "corrupt_bytes": merger.corrupt_bytes,
        }
