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


def _collect_only(collect: Callable[[], None]) -> bool:
    """The checkpoint of a reader whose totals are not saved: collect, nothing to save."""
    collect()
    return True


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
        self._checkpoint: Callable[[Callable[[], None]], bool] = _collect_only
        self._received = False
        # Scrapes and pushes must not interleave: route the scrape callback through the lock.
        self._collector._callback = self._scrape  # type: ignore[assignment]
        self.pushes = 0
        self.push_failures = 0
        self._thread: threading.Thread | None = None
        if exporter is not None:
            self._thread = threading.Thread(target=self._run, name="otel-metric-push", daemon=True)
            self._thread.start()

    def bind_checkpoint(self, checkpoint: Callable[[Callable[[], None]], bool]) -> None:
        """Collect through ``checkpoint(collect)`` for every push and scrape: it runs ``collect`` on
        the totals it saves, and says whether they were saved; unsaved data is not pushed."""
        self._checkpoint = checkpoint

    def _merge(self, data: MetricsData | None) -> MetricsData | None:
        """The SDK's collected data plus the producers' scopes (in-process counters and histograms)."""
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

    def _collect_all(self, timeout_millis: float = 10_000) -> None:
        """The SDK's ``collect``, which skips ``_receive_metrics`` when its own instruments have no
        points: the producers' points are received all the same."""
        self._received = False
        self.collect(timeout_millis=timeout_millis)
        if not self._received:
            self._receive_metrics(MetricsData(resource_metrics=[]), timeout_millis)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._received = True
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
                self._collect_all()
            finally:
                self._pushing = False
            data, self._pending = self._pending, None
        return data

    def _scrape(self) -> None:
        with self._lock:  # rendered even if the totals could not be saved: a scrape cannot wait
            self._checkpoint(self._collect_all)

    def push(self, timeout: float | None = None) -> bool:
        """Collect and export now (within ``timeout`` seconds, default the export timeout);
        ``True`` if the exporter accepted the data."""
        if self._exporter is None:
            return True
        timeout = self._timeout if timeout is None else min(timeout, self._timeout)

        def collect() -> None:
            self._collect_all(timeout_millis=self._timeout * 1000)

        with self._lock:
            self._pushing = True
            try:
                saved = self._checkpoint(collect)
            finally:
                self._pushing = False
            data, self._pending = self._pending, None
        if data is None:
            return True
        error = None
        try:
            if not saved:
                error = "the metric totals could not be saved first (see metric_checkpoint_failed)"
            elif self._exporter.export(data, timeout_millis=timeout * 1000) is not MetricExportResult.SUCCESS:
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
