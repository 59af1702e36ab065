"""The export side in a child process (the default): its own interpreter lock, so encoding and sending
never stall intake. It serves its Prometheus text and export status to the first intake process over a
unix socket, and the first process restarts it (with backoff, counted) whenever it dies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..config import Settings
from ..telemetry.logs import configure_diagnostics, diagnostics
from .export_host import ThreadRunner, wire_export

__all__ = ["ProcessRunner"]

_WATCH_SECONDS = 0.5
_RESTART_BACKOFF = (0.5, 30.0)
#: Restarts that failed in a row before liveness (``/health``) fails: the orchestrator's turn.
MAX_FAILED_STARTS = 3
_START_TIMEOUT = 30.0
_log = diagnostics()


def _child_main(settings: Settings, socket_path: str) -> None:
    """Entry point of the export process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    configure_diagnostics(settings.log_level, "export")
    parts = wire_export(settings)
    runner = ThreadRunner(parts)
    runner.start()
    stopping = threading.Event()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=await runner.metrics_text(), content_type="text/plain")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(await runner.status())

    async def stop(request: web.Request) -> web.Response:
        timeout = float(request.query.get("timeout", "10"))
        stopping.set()
        await runner.stop(timeout)
        return web.json_response(await runner.status())

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/status", status)
        app.router.add_post("/stop", stop)
        web_runner = web.AppRunner(app, access_log=None)
        await web_runner.setup()
        await web.UnixSite(web_runner, socket_path).start()
        os.chmod(socket_path, 0o600)  # only this user's processes may ask it to stop
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        parent = os.getppid()
        while not stopping.is_set() and os.getppid() == parent:
            await asyncio.sleep(0.2)
        if runner.alive():  # orphaned or SIGTERM without /stop: flush what we can
            await runner.stop(settings.shutdown_timeout)
        await asyncio.sleep(0.2)  # let the /stop answer go out
        await web_runner.cleanup()

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

    async def status(self) -> dict[str, Any]:
        try:
            async with self._client().get("http://export/status") as response:
                result: dict[str, Any] = await response.json()
                return {**result, "restarts": self._restarts}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"state": "unreachable", "error": str(exc), "restarts": self._restarts}

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        try:
            async with self._client().post(
                f"http://export/stop?timeout={timeout}",
                timeout=aiohttp.ClientTimeout(total=timeout + 5),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            pass
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5)
