"""The composition of the HTTP application: ``create_app`` wires intake, export and telemetry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psutil
from aiohttp import web

from ._group_commit import GroupCommit
from ._instruments import IntakeInstruments
from ._intake import Intake
from ._rate_limit import RateLimiter
from ._runner import ExportRunner
from ._settings import Settings
from ._spool import SpoolWriter
from ._telemetry import Metrics
from ._version import __version__
from .web_handlers import SERVICE, Service, routes
from .web_middlewares import create_middlewares

__all__ = ["SERVER_OPTIONS", "create_app"]

#: Options of the HTTP server that the app carries with it: bodies are decompressed by the handlers
#: (with a bound on the output), and request lines and headers are bounded.
SERVER_OPTIONS = {
    "auto_decompress": False,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
}


def create_app(settings: Settings, *, runner: ExportRunner, metrics: Metrics) -> web.Application:
    """The sidecar's HTTP app. ``runner`` hosts the export side; ``metrics`` carries the intake's own
    metrics (the caller owns and shuts it down)."""
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
    app = web.Application(
        middlewares=create_middlewares(
            stats=intake.stats,
            instruments=instruments,
            histograms=metrics.histograms,
            auth_token=settings.auth_token,
            limiter=RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None,
            cors_origins=settings.cors_origins,
        ),
        client_max_size=settings.max_body_bytes,
        handler_args=SERVER_OPTIONS,
    )
    app[SERVICE] = service
    app.add_routes(routes())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runner.start()
        sync = None
        if settings.spool_fsync == "interval":
            import asyncio

            async def fsync_loop() -> None:
                while True:
                    await asyncio.sleep(0.1)
                    writer.sync()

            sync = asyncio.create_task(fsync_loop())
        yield
        intake.closed = True
        if sync is not None:
            sync.cancel()
        writer.close()
        await runner.stop(settings.shutdown_timeout)

    app.cleanup_ctx.append(lifecycle)
    return app
