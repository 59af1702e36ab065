"""OpenTelemetry providers, built from settings; nothing here touches global state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    CardinalityLimits,
    MetricExporter,
    MetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from .._version import __version__
from ..config import Settings
from .aggregates import Aggregates
from .instruments import create_views
from .logs import diagnostics
from .reader import PrometheusOtlpReader

__all__ = ["Metrics", "create_metrics", "create_resource", "shutdown_quietly"]


def create_resource(settings: Settings, instance_id: str) -> Resource:
    """service.name/version/instance.id, the SDK's attributes, and ``OTEL_RESOURCE_ATTRIBUTES``."""
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "service.version": __version__,
        **settings.resource_attributes,
        "service.name": settings.service_name,
        "service.instance.id": settings.resource_attributes.get("service.instance.id", instance_id),
    }
    return Resource(attributes)


@dataclass(frozen=True, slots=True)
class Metrics:
    """A meter provider, the in-process counters and histograms, and the Prometheus registry that
    ``/metrics`` renders."""

    provider: MeterProvider
    registry: CollectorRegistry
    reader: PrometheusOtlpReader
    aggregates: Aggregates


def cardinality_limits(limit: int) -> CardinalityLimits:
    """The same cap for every instrument kind; beyond it the SDK adds one overflow series."""
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter,
             ObservableGauge)  # fmt: skip
    return dict.fromkeys(kinds, limit)


def _otlp_metric_exporter(settings: Settings) -> MetricExporter:
    assert settings.otlp_endpoint is not None
    headers = dict(settings.otlp_headers)
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=settings.otlp_endpoint,
            insecure=not settings.otlp_endpoint.startswith("https://"),
            headers=headers,
            timeout=settings.otlp_timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    return HttpExporter(
        endpoint=f"{settings.otlp_endpoint}/v1/metrics",
        headers=headers,
        timeout=settings.otlp_timeout,
    )


def shutdown_quietly(provider: MeterProvider, timeout: float) -> None:
    """Flush and stop a meter provider; telemetry failures are logged, never raised."""
    try:
        provider.shutdown(timeout_millis=max(1.0, timeout) * 1000)
    except Exception:
        diagnostics().warning("metric_shutdown_failed", exc_info=True)


def create_metrics(
    settings: Settings,
    resource: Resource,
    *,
    scope: str,
    start_ns: int | None = None,
    target_info: bool = True,
    extra_readers: Sequence[MetricReader] = (),
) -> Metrics:
    """A meter provider and in-process counters and histograms (instrumentation scope ``scope``, their
    series starting at ``start_ns``) behind one reader that serves ``/metrics`` and pushes OTLP when an
    endpoint is configured; ``extra_readers`` see the SDK instruments only."""
    registry = CollectorRegistry(auto_describe=True)
    aggregates = Aggregates(scope, __version__, settings.cardinality_limit, start_ns=start_ns)
    reader = PrometheusOtlpReader(
        _otlp_metric_exporter(settings) if settings.otlp_endpoint else None,
        interval=settings.metric_export_interval,
        timeout=settings.metric_export_timeout,
        disable_target_info=not target_info,
        registry=registry,
        cardinality_limits=cardinality_limits(settings.cardinality_limit),
        resource=resource,
        producers=[aggregates.scope_metrics],
        name=scope,
    )
    readers: list[MetricReader] = [reader, *extra_readers]
    provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        views=create_views(),
        shutdown_on_exit=False,  # shut down explicitly, within the shutdown timeout (not twice)
    )
    return Metrics(provider, registry, reader, aggregates)
