"""The export side in a child process (the default): its own interpreter lock, so encoding and sending
never stall intake. It serves its Prometheus text and export status to the first intake process over a
unix socket, and the first process restarts it (with backoff, counted) whenever it dies.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..config import Settings
from ..spool import Position
from ..telemetry.logs import configure_diagnostics, diagnostics
from .export_host import ThreadRunner, wire_export

__all__ = ["ProcessRunner", "stop_thread_runner", "within"]

_WATCH_SECONDS = 0.5
_RESTART_BACKOFF = (0.5, 30.0)
#: Restarts that failed in a row before liveness (``/health``) fails: the orchestrator's turn.
MAX_FAILED_STARTS = 3
_START_TIMEOUT = 30.0
#: Of a stop's time, what the export process keeps for exiting once its stop is done (or given up).
_EXIT_SECONDS = 0.5
_log = diagnostics()


async def within(timeout: float, work: Callable[[], object], *, name: str) -> bool:
    """Run blocking ``work`` in a daemon thread and wait ``timeout`` seconds for it at most; whether it
    finished. Work still blocked then (a request to a collector that accepts connections but never
    answers waits for OTEL_EXPORTER_OTLP_TIMEOUT, whatever the stop asked) is abandoned: a daemon
    thread does not hold the process's exit."""
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, max(0.0, timeout))
    return not thread.is_alive()


class _OneStop:
    """A ``ThreadRunner``'s stop (drain, last metric push, cursor), run once however many ask for it
    (the first process's ``/stop``, SIGTERM, the first process gone): it ends at the earliest deadline
    any of them asked for. Given up then: the cursor is saved as it stands, and what was not delivered
    stays in the spool."""

    def __init__(self, runner: ThreadRunner) -> None:
        self._runner = runner
        self._thread: threading.Thread | None = None
        self._deadline = math.inf

    async def __call__(self, timeout: float) -> None:
        self._deadline = min(time.monotonic() + timeout, self._deadline)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._stop, args=(timeout,), name="otel-export-stop", daemon=True
            )
            self._thread.start()
        while self._thread.is_alive() and (left := self._deadline - time.monotonic()) > 0:
            await asyncio.to_thread(self._thread.join, min(left, 0.1))  # a later, nearer deadline ends it
        if self._thread.is_alive():
            self._runner.parts.worker.save_cursor()

    def _stop(self, timeout: float) -> None:
        try:
            asyncio.run(self._runner.stop(timeout))
        except Exception:
            _log.warning("export_stop_failed", exc_info=True)


async def stop_thread_runner(runner: ThreadRunner, timeout: float) -> None:
    """``runner.stop(timeout)``, given up after ``timeout`` seconds (it blocks while the export side's
    metrics are pushed, up to the exporter's own timeout)."""
    await _OneStop(runner)(timeout)


def _child_main(settings: Settings, socket_path: str) -> None:
    """Entry point of the export process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    configure_diagnostics(settings.log_level, "export")
    parts = wire_export(settings)
    runner = ThreadRunner(parts)
    runner.start()
    stopping = threading.Event()
    stop_runner = _OneStop(runner)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=await runner.metrics_text(), content_type="text/plain")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(await runner.status())

    async def recorded(_: web.Request) -> web.Response:
        position = runner.parts.worker.recorded_to()
        return web.json_response([position.segment, position.offset])

    async def stop(request: web.Request) -> web.Response:
        timeout = float(request.query.get("timeout", "10"))
        stopping.set()
        await stop_runner(timeout)
        return web.json_response(await runner.status())

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/status", status)
        app.router.add_get("/recorded", recorded)
        app.router.add_post("/stop", stop)
        # Its one client is the first process: a request of its own still open at the exit is given up.
        web_runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await web_runner.setup()
        await web.UnixSite(web_runner, socket_path).start()
        os.chmod(socket_path, 0o600)  # only this user's processes may ask it to stop
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        parent = os.getppid()
        while not stopping.is_set() and os.getppid() == parent:
            await asyncio.sleep(0.2)
        # Orphaned or SIGTERM without /stop: flush what we can. After /stop: wait for that stop (once).
        await stop_runner(settings.shutdown_timeout)
        await web_runner.cleanup()  # lets the /stop answer go out first

    asyncio.run(serve())


class ProcessRunner:
    """The worker in a child process, reached over a unix socket, restarted when it dies."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._socket = str(Path(settings.spool_dir) / "export.sock")
        self._process: multiprocessing.process.BaseProcess = self._new_process()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._restarts = 0
        self._failed_starts = 0

    def _new_process(self) -> multiprocessing.process.BaseProcess:
        return multiprocessing.get_context("spawn").Process(
            target=_child_main,
            args=(self._settings, self._socket),
            name="otel-service-export",
            daemon=False,
        )

    def start(self) -> None:
        """Start the export process and wait until it answers on its socket (raises RuntimeError)."""
        Path(self._socket).unlink(missing_ok=True)
        self._process.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not Path(self._socket).exists():
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the export process did not start (exit code {self._process.exitcode})")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self._process.is_alive()

    def failed(self) -> bool:
        """It died and could not be started again ``MAX_FAILED_STARTS`` times in a row."""
        return self._failed_starts >= MAX_FAILED_STARTS

    def restarts(self) -> int:
        return self._restarts

    async def supervise(self) -> None:
        """Restart the export process whenever it dies, with exponential backoff, until ``stop``. What
        it had not delivered is in the spool: the new process goes on from the saved cursor."""
        delay = _RESTART_BACKOFF[0]
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            if self._stopping or self._process.is_alive():
                continue
            _log.warning(
                "export_process_exited",
                exit_code=self._process.exitcode,
                restarts=self._restarts,
                restart_in_seconds=delay,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self._process = self._new_process()
            try:
                await asyncio.to_thread(self.start)
            except RuntimeError as exc:
                self._failed_starts += 1
                delay = min(delay * 2, _RESTART_BACKOFF[1])
                if self.failed():
                    _log.error("export_process_failed", message=str(exc), failed_starts=self._failed_starts)
                continue
            await self._reconnect()
            self._restarts += 1
            self._failed_starts = 0
            delay = _RESTART_BACKOFF[0]
            _log.info("export_process_restarted", restarts=self._restarts)

    async def _reconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self._socket),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        return self._session

    async def metrics_text(self) -> bytes:
        """The export side's Prometheus text; empty while it cannot answer (being restarted)."""
        try:
            async with self._client().get("http://export/metrics") as response:
                return await response.read() if response.status == 200 else b""
        except (aiohttp.ClientError, TimeoutError):
            return b""

    async def recorded(self) -> Position | None:
        """The export process's recorded position; None while it cannot answer."""
        try:
            async with self._client().get("http://export/recorded") as response:
                segment, offset = await response.json()
                return Position(int(segment), int(offset))
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError):
            return None

    async def status(self) -> dict[str, Any]:
        try:
            async with self._client().get("http://export/status") as response:
                result: dict[str, Any] = await response.json()
                return {**result, "restarts": self._restarts}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"state": "unreachable", "error": str(exc), "restarts": self._restarts}

    async def stop(self, timeout: float) -> None:
        """Have the export process drain, push its metrics, save its cursor and exit, within
        ``timeout`` seconds in all; killed if it is still running then (what it had not delivered
        stays in the spool)."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        try:
            async with self._client().post(
                f"http://export/stop?timeout={max(0.0, timeout - _EXIT_SECONDS):.3f}",
                timeout=aiohttp.ClientTimeout(total=max(0.01, timeout)),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            pass
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._process.join, max(0.0, deadline - time.monotonic()))
        if self._process.is_alive():
            _log.warning(
                "export_process_killed",
                reason="not stopped within the shutdown timeout",
                action="what it had not delivered stays in the spool",
            )
            self._process.kill()
            await asyncio.to_thread(self._process.join, 1)
