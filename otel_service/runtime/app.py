"""The first intake process: ``run`` starts the sidecar, ``create_app`` wires its HTTP side (intake, the
status endpoints, the other intake processes, the export host it is given), ``serve`` runs it until
asked to stop.

A stop has one deadline, ``OTELSVC_SHUTDOWN_TIMEOUT`` after the signal, shared by every step in turn
(each gets what the steps before it left): every intake process stops listening and has half the
timeout to finish its requests in progress (``request_grace``); the shards are copied; the export side
drains, pushes its metrics and saves its cursor while the intake's own metrics are pushed. Whatever
is not done by the deadline is given up: the export process is killed, a push still waiting for an
unanswering collector is abandoned, and what was not delivered stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import psutil
from aiohttp import web

from .._version import __version__
from ..config import Settings, SettingsError
from ..intake.accept import IntakeStats
from ..intake.analytics import QUERY_TIMEOUT, Analytics
from ..intake.connections import JsonServer
from ..intake.fresh import FreshReads
from ..intake.handlers import Service, intake_handler, intake_routes
from ..intake.server import create_status_handler
from ..intake.status import Status, status_routes
from ..spool import SpoolLocked, SpoolWriter, sync_every
from ..spool.checkpoint import spool_identity
from ..store import AnalyticsReader
from ..telemetry.logs import configure_diagnostics, diagnostics
from ..telemetry.providers import (
    Metrics,
    create_metrics,
    create_resource,
    shutdown_quietly,
)
from .export_host import ExportRunner, ThreadRunner, wire_export
from .export_process import ProcessRunner, stop_thread_runner, within
from .intake_group import IntakeGroup, request_grace
from .loop import SERVER_OPTIONS, CannotListen, listen, new_event_loop
from .wiring import connection_limits, wire_intake

__all__ = ["SERVER_OPTIONS", "App", "CannotListen", "create_app", "refuse_settings", "run", "serve"]


class App:
    """The sidecar's HTTP side: ``handle`` serves requests between ``start`` and ``stop``; ``group``
    holds the other intake processes, if any."""

    def __init__(
        self,
        service: Service,
        status: Status,
        runner: ExportRunner,
        group: IntakeGroup,
        writer: SpoolWriter,
        metrics: Metrics,
    ) -> None:
        self.settings = service.settings
        self.service = service
        self.status = status
        self.runner = runner
        self.group = group
        self._writer = writer
        self._metrics = metrics
        self._fsync_loop: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._supervising: asyncio.Task[None] | None = None
        self.handle = intake_handler(service, {**intake_routes(service), **status_routes(status)})
        #: What the other intake processes reach over the unix socket: the status endpoints.
        self.handle_status = create_status_handler(status_routes(status))

    def server(self) -> web.Server:
        """An aiohttp low-level server for ``handle``."""
        return JsonServer(
            self.handle,
            stats=self.service.intake.stats,
            limits=connection_limits(self.settings),
            access_log=None,
            **SERVER_OPTIONS,
        )

    async def start(self) -> None:
        """Start the export side, copying spool shards into the main spool (and, with
        ``OTELSVC_SPOOL_FSYNC=interval``, the fsync timer)."""
        # In a thread: the export process takes a second to start, and a signal meanwhile is seen. A
        # stop meanwhile ends ``start`` but waits for this (``stop``): no export process half started.
        self._starting = asyncio.ensure_future(asyncio.to_thread(self.runner.start))
        await asyncio.shield(self._starting)
        self._supervising = asyncio.create_task(self.runner.supervise())
        self.group.start_merging()
        if self.settings.spool_fsync == "interval":
            self._fsync_loop = asyncio.create_task(sync_every(self._writer, 0.1))

    async def stop(self, deadline: float | None = None) -> None:
        """Refuse new events, copy what the shards still hold and close the spool; then let the export
        side drain while the intake's own metrics are pushed a last time. All by ``deadline`` (a
        ``time.monotonic()`` value; default: the shutdown timeout from now). (``serve`` stops the other
        intake processes first.)"""
        if deadline is None:
            deadline = time.monotonic() + self.settings.shutdown_timeout
        self.service.intake.closed = True
        await self.group.finish_merging(deadline)
        if self._fsync_loop is not None:
            self._fsync_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_loop
        self._writer.close()
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervising
        if self._starting is not None and not self._starting.done():
            await asyncio.wait({self._starting}, timeout=max(0.0, deadline - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        provider = self._metrics.provider
        # A push to a collector that accepts connections but never answers waits for the exporter's own
        # timeout (OTEL_EXPORTER_OTLP_TIMEOUT), whatever the shutdown asks: it is abandoned at the
        # deadline (a daemon thread does not hold the exit), as is a thread runner's stop.
        await asyncio.gather(
            self._stop_export(left),
            within(left, lambda: shutdown_quietly(provider, left), name="otel-intake-metrics-stop"),
        )
        self.group.own_stats.close()

    async def _stop_export(self, timeout: float) -> None:
        if self._starting is None:  # stopped before it started
            return
        if isinstance(self.runner, ThreadRunner):  # its stop blocks: in a thread of its own
            await stop_thread_runner(self.runner, timeout)
        else:
            await self.runner.stop(timeout)


def create_app(settings: Settings, *, runner: ExportRunner, metrics: Metrics) -> App:
    """The sidecar's HTTP side. ``runner`` hosts the export side; ``metrics`` carries the intake's own
    metrics (``App.stop`` shuts it down)."""
    writer = SpoolWriter(settings.spool_dir, fsync=settings.spool_fsync)
    group = IntakeGroup(settings, writer, IntakeStats.durable(settings.spool_dir))
    service = wire_intake(  # its metrics count every intake process's events
        settings,
        writer,
        aggregates=metrics.aggregates,
        stats=group.own_stats,
        received=lambda: group.stats().received,
        rejected=lambda: group.stats().rejected,
        shards=group.shard_counts,
        counted_since=spool_identity(settings.spool_dir).start_ns,  # the counts carry on
    )
    if len(group):  # one request-duration series per attribute set, whichever process served it
        service.instruments.request_duration.peers = group.published_durations
    fresh = FreshReads(
        settings.spool_dir,
        group.shards,
        copied_to=group.merger.copied_to,
        recorded=runner.recorded,
        stale=lambda path: service.instruments.stale_reads.add(1, {"endpoint": path}),
        timeout=settings.read_after_write,
    )
    reader = AnalyticsReader(settings.store_file, timeout=QUERY_TIMEOUT) if settings.store == "on" else None
    status = Status(
        service,
        runner,
        metrics.registry,
        psutil.Process(),
        group.stats,
        group.processes,
        group.problems,
        fresh,
        Analytics(reader),
    )
    return App(service, status, runner, group, writer, metrics)


async def serve(app: App, stop: asyncio.Event) -> None:
    """Serve ``app`` on the configured address until ``stop`` is set, then shut down gracefully within
    the shutdown timeout: stop listening (every intake process), let requests in progress finish
    (within ``request_grace``), stop the app (with what is left)."""
    settings = app.settings
    server = web.ServerRunner(app.server(), shutdown_timeout=request_grace(settings))
    await server.setup()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        starting = asyncio.ensure_future(_start_serving(app, server))
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # raises CannotListen if it could not listen
            await stopped
        else:  # asked to stop while starting (processes starting, waiting for predecessors)
            starting.cancel()
            await asyncio.wait({starting})
    finally:
        stopped.cancel()
        deadline = time.monotonic() + settings.shutdown_timeout
        await asyncio.gather(server.cleanup(), app.group.stop(deadline))
        await app.stop(deadline)


async def _start_serving(app: App, server: web.ServerRunner) -> None:
    """Start the app, then listen on the configured address in every intake process."""
    settings = app.settings
    await app.start()
    await app.group.wait_for_predecessors(settings.shutdown_timeout + 2)
    port = await listen(server, settings.host, settings.port, shared=len(app.group) > 0)
    await app.group.start(port, app.handle_status)
    diagnostics().info(
        "listening",
        message=f"otel-service {__version__} listening on http://{settings.host}:{port}",
        export=settings.otlp_endpoint or "embedded default, no OTLP",
        intake_processes=len(app.group) + 1,
    )


async def _serve_until_signalled(app: App) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(app, stop)


def run(settings: Settings) -> int:
    """``otel-service serve``: the whole sidecar in this process (the first intake process) and its
    children, until SIGINT or SIGTERM; 0 after a graceful stop, 2 if it cannot start."""
    configure_diagnostics(settings.log_level, "intake-0")
    log = diagnostics()
    identity = spool_identity(settings.spool_dir)  # every process reports under the spool's identity
    resource = create_resource(settings, identity.instance_id)
    intake_metrics = create_metrics(settings, resource, scope="otel_service.intake", target_info=False)
    runner: ExportRunner
    if settings.export_mode == "thread":
        runner = ThreadRunner(wire_export(settings, identity=identity))
    else:
        runner = ProcessRunner(settings)
    try:
        app = create_app(settings, runner=runner, metrics=intake_metrics)
    except SpoolLocked as exc:
        log.error(
            "spool_in_use",
            message=f"otel-service: {exc}",
            hint="to run a second sidecar on this host, give it its own OTELSVC_SPOOL_DIR",
        )
        return 2
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as loop_runner:
            loop_runner.run(_serve_until_signalled(app))
    except CannotListen as exc:
        log.error("cannot_listen", message=f"otel-service: {exc}")
        return 2
    finally:
        sys.stdout.flush()
    return 0


def refuse_settings(error: SettingsError) -> int:
    """Report settings ``serve`` cannot use, as a diagnostic line; the exit code."""
    configure_diagnostics("info", "intake-0")
    diagnostics().error("invalid_settings", message=f"otel-service: {error}")
    return 2
