"""The composition of the HTTP side: ``create_app`` wires intake, export and telemetry; ``serve`` runs it."""

from __future__ import annotations

import asyncio
import contextlib

import psutil
from aiohttp import web

from .._version import __version__
from ..config import Settings
from ..intake.accept import Intake
from ..intake.handlers import Service, Status, group_commit, intake_handler, intake_routes, status_routes
from ..intake.server import create_status_handler
from ..spool.segments import SpoolWriter
from ..telemetry.instruments import IntakeInstruments
from ..telemetry.providers import Metrics, shutdown_quietly
from .export_host import ExportRunner
from .intake_group import IntakeGroup, intake_spools
from .server import SERVER_OPTIONS, CannotListen, listen, sync_every

__all__ = ["SERVER_OPTIONS", "App", "CannotListen", "create_app", "serve"]


class App:
    """The sidecar's HTTP side: ``handle`` serves requests between ``start`` and ``stop``; ``group``
    holds the other intake processes, if any."""

    def __init__(
        self, service: Service, status: Status, group: IntakeGroup, writer: SpoolWriter, metrics: Metrics
    ) -> None:
        self.settings = service.settings
        self.service = service
        self.status = status
        self.group = group
        self._writer = writer
        self._metrics = metrics
        self._fsync_loop: asyncio.Task[None] | None = None
        self.handle = intake_handler(service, {**intake_routes(service), **status_routes(status)})
        #: What the other intake processes reach over the unix socket: the status endpoints.
        self.handle_status = create_status_handler(status_routes(status))

    def server(self) -> web.Server:
        """An aiohttp low-level server for ``handle``."""
        return web.Server(self.handle, access_log=None, **SERVER_OPTIONS)

    async def start(self) -> None:
        """Start the export side, copying spool shards into the main spool (and, with
        ``OTELSVC_SPOOL_FSYNC=interval``, the fsync timer)."""
        self.status.runner.start()
        self.group.start_merging()
        if self.settings.spool_fsync == "interval":
            self._fsync_loop = asyncio.create_task(sync_every(self._writer, 0.1))

    async def stop(self) -> None:
        """Refuse new events, copy what the shards still hold and close the spool; then, within the one
        shutdown timeout, let the export side drain while the intake's own metrics are pushed a last
        time. (``serve`` stops the other intake processes first.)"""
        self.service.intake.closed = True
        await self.group.finish_merging()
        if self._fsync_loop is not None:
            self._fsync_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_loop
        self._writer.close()
        timeout = self.settings.shutdown_timeout
        await asyncio.gather(
            self.status.runner.stop(timeout),
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
        spools=intake_spools(settings),
    )
    group = IntakeGroup(settings, writer, intake.stats)
    instruments = IntakeInstruments.create(
        metrics.provider.get_meter("otel_service.intake", __version__),
        metrics.histograms,
        received=lambda: group.stats().received,
        rejected=lambda: group.stats().rejected,
        shards=group.shard_counts,
    )
    if len(group):  # one request-duration series per attribute set, whichever process served it
        instruments.request_duration.peers = group.published_durations
    service = Service(
        settings,
        intake,
        instruments,
        metrics.histograms,
        commit=group_commit(settings, writer),
    )
    status = Status(
        service, runner, metrics.registry, psutil.Process(), group.stats, group.processes, group.problems
    )
    return App(service, status, group, writer, metrics)


async def serve(app: App, stop: asyncio.Event) -> None:
    """Serve ``app`` on the configured address until ``stop`` is set, then shut down gracefully:
    stop listening (every intake process), let requests in progress finish (within the shutdown
    timeout), stop the app."""
    settings = app.settings
    runner = web.ServerRunner(app.server(), shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    await app.start()
    try:
        await app.group.wait_for_predecessors(settings.shutdown_timeout + 2)
        port = await listen(runner, settings.host, settings.port, shared=len(app.group) > 0)
        await app.group.start(port, app.handle_status)
        await stop.wait()
    finally:
        await asyncio.gather(runner.cleanup(), app.group.stop(settings.shutdown_timeout))
        await app.stop()
