"""The composition of the HTTP side: ``create_app`` wires intake, export and telemetry; ``serve`` runs it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psutil
from aiohttp import web

from ._group_commit import GroupCommit
from ._instruments import IntakeInstruments
from ._intake import Intake
from ._rate_limit import RateLimiter
from ._runner import ExportRunner
from ._settings import Settings
from ._spool import SpoolWriter
from ._telemetry import Metrics, shutdown_quietly
from ._version import __version__
from .web_boundary import create_handler
from .web_handlers import Service, routes

__all__ = ["SERVER_OPTIONS", "App", "CannotListen", "create_app", "serve"]

#: Options of aiohttp's server: bodies are decompressed by the handlers (with a bound on the output),
#: and request lines and headers are bounded.
SERVER_OPTIONS: dict[str, Any] = {
    "auto_decompress": False,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
}


class CannotListen(RuntimeError):
    """The configured address is taken or not ours to bind."""


class App:
    """The sidecar's HTTP side: ``handle`` serves requests between ``start`` and ``stop``."""

    def __init__(self, service: Service, writer: SpoolWriter, metrics: Metrics) -> None:
        settings = self.settings = service.settings
        self.service = service
        self._writer = writer
        self._metrics = metrics
        self._fsync_loop: asyncio.Task[None] | None = None
        self.handle = create_handler(
            routes(service),
            stats=service.intake.stats,
            instruments=service.instruments,
            histograms=service.histograms,
            auth_token=settings.auth_token,
            limiter=RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None,
            cors_origins=settings.cors_origins,
        )

    def server(self) -> web.Server:
        """An aiohttp low-level server for ``handle``."""
        return web.Server(self.handle, access_log=None, **SERVER_OPTIONS)

    async def start(self) -> None:
        """Start the export side (and, with ``OTELSVC_SPOOL_FSYNC=interval``, the fsync timer)."""
        self.service.runner.start()
        if self.settings.spool_fsync == "interval":
            self._fsync_loop = asyncio.create_task(self._sync_every(0.1))

    async def _sync_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self._writer.sync()

    async def stop(self) -> None:
        """Refuse new events and close the spool; then, within the one shutdown timeout, let the export
        side drain while the intake's own metrics are pushed a last time."""
        self.service.intake.closed = True
        if self._fsync_loop is not None:
            self._fsync_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_loop
        self._writer.close()
        timeout = self.settings.shutdown_timeout
        await asyncio.gather(
            self.service.runner.stop(timeout),
            asyncio.to_thread(shutdown_quietly, self._metrics.provider, timeout),
        )


def create_app(settings: Settings, *, runner: ExportRunner, metrics: Metrics) -> App:
    """The sidecar's HTTP side. ``runner`` hosts the export side; ``metrics`` carries the intake's own
    metrics (``App.stop`` shuts it down)."""
    writer = SpoolWriter(settings.spool_dir, fsync=settings.spool_fsync)
    intake = Intake(
        writer,
        max_spool_bytes=settings.spool_max_bytes,
        max_spool_age=settings.spool_max_age,
    )
    instruments = IntakeInstruments.create(
        metrics.provider.get_meter("otel_service.intake", __version__),
        metrics.histograms,
        received=lambda: intake.stats.received,
        rejected=lambda: intake.stats.rejected,
    )
    service = Service(
        settings,
        intake,
        runner,
        instruments,
        metrics.registry,
        metrics.histograms,
        psutil.Process(),
        commit=GroupCommit(writer.sync) if settings.spool_fsync == "always" else None,
    )
    return App(service, writer, metrics)


async def serve(app: App, stop: asyncio.Event) -> None:
    """Serve ``app`` on the configured address until ``stop`` is set, then shut down gracefully:
    stop listening, let requests in progress finish (within the shutdown timeout), stop the app."""
    settings = app.settings
    runner = web.ServerRunner(app.server(), shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    await app.start()
    try:
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as exc:
            raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
        await stop.wait()
    finally:
        await runner.cleanup()
        await app.stop()
