"""The export side: ``wire_export`` wires it, and a host runs it in a thread of this process or in a
child process (the default).

The child process has its own interpreter lock, so encoding and sending never stall intake. It serves
its Prometheus text and export status to the parent over a unix socket.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import generate_latest

from .._version import __version__
from ..config import Settings
from ..export import otlp
from ..export.recorder import Recorder
from ..export.sender import Sender, create_sender
from ..export.worker import ExportWorker
from ..intake.status import ExportView
from ..model.pricing import load_price_table
from ..spool import SpoolReader, stats
from ..telemetry.instruments import WorkerInstruments, register_observables
from ..telemetry.logs import configure_diagnostics, create_event_logger
from ..telemetry.providers import Metrics, create_metrics, create_resource, shutdown_quietly

__all__ = ["ExportRunner", "ProcessRunner", "ThreadRunner", "WorkerParts", "wire_export"]


@dataclass(frozen=True, slots=True)
class WorkerParts:
    worker: ExportWorker
    metrics: Metrics


def wire_export(
    settings: Settings,
    resource: Resource,
    *,
    extra_readers: Sequence[MetricReader] = (),
    log_stream: Any = None,
    sender: Sender | None = None,
) -> WorkerParts:
    """Everything the export side needs, wired from settings (``sender``: instead of the one the
    OTLP settings describe)."""
    metrics = create_metrics(settings, resource, scope="otel_service.export", extra_readers=extra_readers)
    meter = metrics.provider.get_meter("otel_service.export", __version__)
    instruments = WorkerInstruments.create(meter, metrics.histograms)
    recorder = Recorder(
        instruments,
        prices=load_price_table(settings.price_table),
        logger=create_event_logger(log_stream if log_stream is not None else sys.stdout.buffer),
        service_name=settings.service_name,
        default_provider=settings.default_provider,
        max_tenants=settings.max_tenants,
        max_label_values=settings.max_label_values,
    )
    sender = sender or (
        create_sender(
            settings.otlp_endpoint,
            settings.otlp_protocol,
            settings.otlp_headers,
            settings.otlp_timeout,
        )
        if settings.otlp_endpoint
        else None
    )
    worker = ExportWorker(
        SpoolReader(settings.spool_dir),
        recorder,
        instruments,
        sender=sender,
        resource=_resource_proto(resource),
        batch_size=settings.export_batch_size,
        linger=settings.export_delay,
        metrics_pushed=settings.otlp_endpoint is not None,
        metrics_lock=metrics.histograms.lock,
    )
    metrics.reader.bind_checkpoints(
        worker.metrics_lock, worker.metrics_checkpoint, worker.metrics_exporting, worker.metrics_exported
    )
    register_observables(
        meter,
        metrics.histograms,
        drift_scores=recorder.drift.scores,
        spool_bytes=lambda: stats(settings.spool_dir).bytes,
        spool_items=worker.queued_items,
        oldest_age=worker.oldest_age,
    )
    return WorkerParts(worker, metrics)


def _resource_proto(resource: Resource) -> bytes:
    """The serialized OTLP Resource message of ``resource``."""
    return otlp.resource(
        {k: v for k, v in resource.attributes.items() if isinstance(v, str | bool | int | float)}
    )


class ExportRunner(ExportView, Protocol):
    """A host of the export side: what the status endpoints read, and its lifecycle."""

    def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


class ThreadRunner:
    """The worker in a thread of this process (tests, and ``OTELSVC_EXPORT_MODE=thread``)."""

    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        self._thread = threading.Thread(target=parts.worker.run, name="otel-export", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    async def metrics_text(self) -> bytes:
        return bytes(generate_latest(self.parts.metrics.registry))

    async def status(self) -> dict[str, Any]:
        worker = self.parts.worker
        return {**worker.status.to_json(), "spool": worker.spool_json()}

    async def stop(self, timeout: float) -> None:
        """Drain and push within ``timeout`` seconds in all; what is left stays in the spool."""
        deadline = time.monotonic() + timeout
        self.parts.worker.stop(timeout * 0.75)
        await asyncio.to_thread(self._thread.join, timeout)
        shutdown_quietly(self.parts.metrics.provider, max(0.5, deadline - time.monotonic()))
        self.parts.worker.save_cursor()


# -- child process ------------------------------------------------------------------------------


def _child_main(settings: Settings, instance_id: str, socket_path: str) -> None:
    """Entry point of the export process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    configure_diagnostics(settings.log_level, "export")
    parts = wire_export(settings, create_resource(settings, instance_id))
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
    """The worker in a child process, reached over a unix socket."""

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self._settings = settings
        self._socket = str(Path(settings.spool_dir) / "export.sock")
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=_child_main,
            args=(settings, instance_id, self._socket),
            name="otel-service-export",
            daemon=False,
        )
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        Path(self._socket).unlink(missing_ok=True)
        self._process.start()
        deadline = time.monotonic() + 30
        while not Path(self._socket).exists():
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the export process did not start")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self._process.is_alive()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self._socket),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        return self._session

    async def metrics_text(self) -> bytes:
        async with self._client().get("http://export/metrics") as response:
            return await response.read()

    async def status(self) -> dict[str, Any]:
        try:
            async with self._client().get("http://export/status") as response:
                result: dict[str, Any] = await response.json()
                return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"state": "unreachable", "error": str(exc)}

    async def stop(self, timeout: float) -> None:
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
