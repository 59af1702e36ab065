"""An intake process other than the first: it binds the shared port, spools into its own shard,
publishes its counters every ``PUBLISH_SECONDS`` and forwards the status endpoints to the first
process (see ``intake_group``). It stops on SIGTERM, or when the first process is gone.

It imports only the intake side: no exporter, no gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .._version import __version__
from ..config import Settings
from ..intake.accept import IntakeStats
from ..intake.connections import JsonServer
from ..intake.handlers import intake_handler, intake_routes
from ..intake.status import Forwarder
from ..spool import SpoolLocked, SpoolWriter, sync_every
from ..spool.shards import publish, read_published, shard_dir
from ..telemetry.aggregates import Aggregates
from ..telemetry.logs import configure_diagnostics, diagnostics
from .loop import SERVER_OPTIONS, CannotListen, listen, new_event_loop
from .wiring import connection_limits, wire_intake

__all__ = ["PUBLISH_SECONDS", "run_intake_process"]

#: How often an intake process publishes its counters (how stale the others' counts can be).
PUBLISH_SECONDS = 0.25


def run_intake_process(settings: Settings, index: int, port: int, socket_path: Path, parent: int) -> None:
    """Entry point of intake process ``index`` (1, 2, ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the first process decides when we stop
    configure_diagnostics(settings.log_level, f"intake-{index}")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve_shard(settings, index, port, socket_path, parent))
    except (CannotListen, SpoolLocked) as exc:
        diagnostics().error("cannot_start", message=str(exc))
        sys.exit(2)
    finally:
        sys.stdout.flush()


async def _serve_shard(settings: Settings, index: int, port: int, socket_path: Path, parent: int) -> None:
    writer = SpoolWriter(shard_dir(settings.spool_dir, index), fsync=settings.spool_fsync)
    # A replacement carries on from its predecessor's published counters: the sums stay monotonic.
    previous = read_published(writer.directory)
    # Not exported from here: the first process reports everyone's.
    aggregates = Aggregates("otel_service.intake", __version__, settings.cardinality_limit)
    service = wire_intake(
        settings,
        writer,
        aggregates=aggregates,
        stats=IntakeStats.durable(
            writer.directory, IntakeStats.load(previous["stats"]) if previous else None
        ),
    )
    stats, instruments = service.intake.stats, service.instruments
    if previous:
        instruments.request_duration.restore(previous["durations"])
    forwarder = Forwarder(socket_path)
    handler = intake_handler(service, {**intake_routes(service), **forwarder.routes()})

    def publish_counters() -> None:
        with aggregates.lock:
            durations = instruments.request_duration.dump()
        publish(writer.directory, {"pid": os.getpid(), "stats": stats.dump(), "durations": durations})

    runner = web.ServerRunner(
        JsonServer(
            handler, stats=stats, limits=connection_limits(settings), access_log=None, **SERVER_OPTIONS
        ),
        shutdown_timeout=settings.shutdown_timeout,
    )
    await runner.setup()
    syncing = asyncio.create_task(sync_every(writer, 0.1)) if settings.spool_fsync == "interval" else None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await listen(runner, settings.host, port, shared=True, first=False)
        publish_counters()  # tells the first process we listen
        while not stop.is_set() and os.getppid() == parent:  # orphaned: stop too
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUBLISH_SECONDS):
                    await stop.wait()
            publish_counters()
    finally:
        await runner.cleanup()
        service.intake.closed = True
        if syncing is not None:
            syncing.cancel()
        writer.close()
        publish_counters()
        stats.close()
        await forwarder.close()
