"""The export side: ``wire_export`` wires it; ``ThreadRunner`` runs it in a thread of this process
(tests, ``OTELSVC_EXPORT_MODE=thread``), ``export_process.ProcessRunner`` in a child process (the
default)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import generate_latest

from .._version import __version__
from ..config import Settings
from ..export import otlp
from ..export.recorder import Recorder
from ..export.sender import Sender, create_sender
from ..export.worker import ExportWorker
from ..intake.status import READY_FILL_RATIO, ExportView
from ..model.pricing import load_price_table
from ..spool import Position, SpoolReader, stats, undelivered
from ..spool.checkpoint import Identity, spool_identity
from ..store import Retention
from ..telemetry.instruments import WorkerInstruments, observe_store_rows, register_observables
from ..telemetry.logs import create_event_logger
from ..telemetry.providers import Metrics, create_metrics, create_resource, shutdown_quietly
from .store_link import StoreLink

__all__ = ["ExportRunner", "ThreadRunner", "WorkerParts", "wire_export"]


@dataclass(frozen=True, slots=True)
class WorkerParts:
    worker: ExportWorker
    metrics: Metrics
    #: The event store's process the worker feeds (``OTELSVC_STORE=on``).
    store: StoreLink | None = None


def wire_export(
    settings: Settings,
    *,
    identity: Identity | None = None,
    extra_readers: Sequence[MetricReader] = (),
    log_stream: Any = None,
    sender: Sender | None = None,
) -> WorkerParts:
    """Everything the export side needs, wired from settings, reporting under the spool's identity
    (``sender``: instead of the one the OTLP settings describe)."""
    identity = identity or spool_identity(settings.spool_dir)
    resource = create_resource(settings, identity.instance_id)
    metrics = create_metrics(
        settings,
        resource,
        scope="otel_service.export",
        start_ns=identity.start_ns,
        extra_readers=extra_readers,
    )
    meter = metrics.provider.get_meter("otel_service.export", __version__)
    instruments = WorkerInstruments.create(metrics.aggregates)
    recorder = Recorder(
        instruments,
        prices=load_price_table(settings.price_table),
        logger=create_event_logger(log_stream if log_stream is not None else sys.stdout.buffer),
        service_name=settings.service_name,
        default_provider=settings.default_provider,
        max_tenants=settings.max_tenants,
        max_label_values=settings.max_label_values,
        kept_labels={"business_id": settings.keep_tenants, "model": settings.keep_models},
        label_idle_seconds=settings.label_idle_seconds,
    )
    metrics.aggregates.keep("label_guards", recorder.guards_state, recorder.restore_guards)
    store = None
    if settings.store == "on":
        store = StoreLink(
            settings.store_file,
            Retention(int(settings.store_retention * 1e9), settings.store_max_bytes),
            log_level=settings.log_level,
            in_thread=settings.export_mode == "thread",
        )
        observe_store_rows(metrics.aggregates, store.counts)
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
        metric_state=metrics.aggregates,
        batch_size=settings.export_batch_size,
        linger=settings.export_delay,
        pressing=lambda: undelivered(settings.spool_dir) >= READY_FILL_RATIO * settings.spool_max_bytes,
        store=store,
    )
    metrics.reader.bind_checkpoint(worker.checkpoint)
    register_observables(
        meter,
        drift_scores=recorder.drift.scores,
        spool_bytes=lambda: stats(settings.spool_dir).bytes,
        spool_items=worker.queued_items,
        oldest_age=worker.oldest_age,
    )
    return WorkerParts(worker, metrics, store)


def _resource_proto(resource: Resource) -> bytes:
    """The serialized OTLP Resource message of ``resource``."""
    return otlp.resource(
        {k: v for k, v in resource.attributes.items() if isinstance(v, str | bool | int | float)}
    )


class ExportRunner(ExportView, Protocol):
    """A host of the export side: what the status endpoints read, and its lifecycle."""

    def start(self) -> None: ...

    async def supervise(self) -> None:
        """Keep the export side running until ``stop`` (a task of the first intake process)."""

    async def stop(self, timeout: float) -> None: ...


class ThreadRunner:
    """The worker in a thread of this process (tests, and ``OTELSVC_EXPORT_MODE=thread``)."""

    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        self._thread = threading.Thread(target=parts.worker.run, name="otel-export", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def failed(self) -> bool:
        """A thread that ended before ``stop`` cannot be started again."""
        return self._thread.ident is not None and not self._thread.is_alive() and not self._stopped

    def restarts(self) -> int:
        return 0

    async def supervise(self) -> None:
        """Nothing to supervise: the thread lives as long as this process."""

    async def metrics_text(self) -> bytes:
        return bytes(generate_latest(self.parts.metrics.registry))

    async def recorded(self) -> Position | None:
        return self.parts.worker.recorded_to()

    async def status(self) -> dict[str, Any]:
        worker, store = self.parts.worker, self.parts.store
        return {
            **worker.status.to_json(),
            "spool": worker.spool_json(),
            "store": {"enabled": False} if store is None else {"enabled": True, **store.status()},
            "restarts": 0,
        }

    async def stop(self, timeout: float) -> None:
        """Drain and push within ``timeout`` seconds in all; what is left stays in the spool."""
        self._stopped = True
        deadline = time.monotonic() + timeout
        self.parts.worker.stop(timeout * 0.75)
        await asyncio.to_thread(self._thread.join, timeout)
        shutdown_quietly(self.parts.metrics.provider, max(0.5, deadline - time.monotonic()))
        self.parts.worker.save_cursor()
