"""One metric reader for both ``/metrics`` (pull) and OTLP (push), so every measurement is aggregated
once instead of once per reader (the SDK's per-measurement cost is per reader)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource

from .logs import diagnostics

__all__ = ["PrometheusOtlpReader"]

_log = diagnostics()


class PrometheusOtlpReader(PrometheusMetricReader):
    """A Prometheus reader that also pushes its (cumulative) data to an OTLP exporter periodically.

    Cumulative temporality means a failed push loses nothing: the next push carries the totals.
    """

    def __init__(
        self,
        exporter: MetricExporter | None,
        *,
        interval: float,
        timeout: float,
        resource: Resource,
        producers: Sequence[Callable[[], ScopeMetrics | None]] = (),
        name: str = "otel_service",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: Names this reader's metrics in diagnostics (the instrumentation scope).
        self._name = name
        #: Pushes failed in a row (the current outage).
        self._failing = 0
        self._resource = resource
        self._producers = tuple(producers)
        self._snapshot = False
        self._exporter = exporter
        self._exporter_lock = threading.Lock()
        self._exporter_down = False
        self._interval = interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pushing = False
        self._pending: MetricsData | None = None
        self._stop = threading.Event()
        self._checkpoint_lock: threading.RLock | None = None
        self._checkpoint: Callable[[], Any] | None = None
        self._exporting: Callable[[Any], None] | None = None
        self._exported: Callable[[Any], None] | None = None
        # Scrapes and pushes must not interleave: route the scrape callback through the lock.
        self._collector._callback = self._scrape  # type: ignore[assignment]
        self.pushes = 0
        self.push_failures = 0
        self._thread: threading.Thread | None = None
        if exporter is not None:
            self._thread = threading.Thread(target=self._run, name="otel-metric-push", daemon=True)
            self._thread.start()

    def bind_checkpoints(
        self,
        lock: threading.RLock,
        checkpoint: Callable[[], Any],
        exporting: Callable[[Any], None],
        exported: Callable[[Any], None],
    ) -> None:
        """Tell the producer of measurements which of them a push covers: each push collects under
        ``lock`` after taking ``checkpoint()``, calls ``exporting(checkpoint)`` before sending and
        ``exported(checkpoint)`` once the exporter accepted the data."""
        self._checkpoint_lock, self._checkpoint = lock, checkpoint
        self._exporting, self._exported = exporting, exported

    def _merge(self, data: MetricsData | None) -> MetricsData | None:
        """The SDK's collected data plus the producers' scopes (in-process histograms)."""
        extra = [scope for produce in self._producers if (scope := produce()) is not None]
        if not extra:
            return data
        if data is None or not data.resource_metrics:
            return MetricsData([ResourceMetrics(self._resource, extra, "")])
        first, *rest = data.resource_metrics
        # Same scope as the SDK's instruments: one ScopeMetrics with both (exporters key by scope).
        scopes = {(s.scope.name, s.scope.version): s for s in first.scope_metrics}
        for scope in extra:
            key = (scope.scope.name, scope.scope.version)
            same = scopes.get(key)
            scopes[key] = (
                scope
                if same is None
                else ScopeMetrics(same.scope, [*same.metrics, *scope.metrics], same.schema_url)
            )
        merged = ResourceMetrics(first.resource, list(scopes.values()), first.schema_url)
        return MetricsData([merged, *rest])

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        data = self._merge(metrics_data)
        if self._pushing:
            self._pending = data
            return
        if data is not None:
            super()._receive_metrics(data, timeout_millis, **kwargs)

    def snapshot(self) -> MetricsData | None:
        """Everything this reader would export now (for tests and diagnostics)."""
        with self._lock:
            self._pushing = True
            try:
                self.collect()
            finally:
                self._pushing = False
            data, self._pending = self._pending, None
        return data

    def _scrape(self) -> None:
        with self._lock:
            self.collect()

    def push(self, timeout: float | None = None) -> bool:
        """Collect and export now (within ``timeout`` seconds, default the export timeout);
        ``True`` if the exporter accepted the data."""
        if self._exporter is None:
            return True
        timeout = self._timeout if timeout is None else min(timeout, self._timeout)
        token = None
        with self._lock:
            self._pushing = True
            try:
                if self._checkpoint_lock is not None and self._checkpoint is not None:
                    with self._checkpoint_lock:
                        token = self._checkpoint()
                        self.collect(timeout_millis=self._timeout * 1000)
                else:
                    self.collect(timeout_millis=self._timeout * 1000)
            finally:
                self._pushing = False
            data, self._pending = self._pending, None
        if data is None:
            return True
        if self._exporting is not None and token is not None:
            self._exporting(token)
        error = None
        try:
            if self._exporter.export(data, timeout_millis=timeout * 1000) is not MetricExportResult.SUCCESS:
                error = "the exporter gave up (timeout, retries exhausted, or refused)"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.pushes += 1
        if error is not None:
            self.push_failures += 1
            self._failing += 1
            if self._failing == 1:  # one line per outage, not one per push
                _log.warning(
                    "metric_export_failed",
                    scope=self._name,
                    error=error,
                    action="pushed again every interval; totals are cumulative, nothing is lost",
                )
            return False
        if self._failing:
            _log.info("metric_export_recovered", scope=self._name, failed_pushes=self._failing)
            self._failing = 0
        if self._exported is not None and token is not None:
            self._exported(token)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.push()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop pushing after one last push, all within ``timeout_millis``.

        OTLP exporters retry on their own clock (``OTEL_EXPORTER_OTLP_TIMEOUT``) whatever timeout an
        export is given; their ``shutdown`` ends a retry at once. So the exporter is shut down at the
        deadline at the latest: with the collector down, a push in progress gives up then instead of
        holding the process's exit for the exporter's whole retry budget."""
        timeout = timeout_millis / 1000
        deadline = time.monotonic() + timeout
        self._stop.set()
        alarm = threading.Timer(timeout, self._shutdown_exporter)
        alarm.daemon = True
        alarm.start()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.push(timeout=max(0.5, deadline - time.monotonic()))
        alarm.cancel()
        self._shutdown_exporter()
        super().shutdown(timeout_millis=timeout_millis, **kwargs)

    def _shutdown_exporter(self) -> None:
        with self._exporter_lock:
            if self._exporter is not None and not self._exporter_down:
                self._exporter_down = True
                self._exporter.shutdown()
