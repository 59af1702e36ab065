"""The metric reader's shutdown keeps to its deadline while the collector refuses everything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog.testing

from otel_service.telemetry.providers import create_metrics, create_resource, shutdown_quietly
from otel_service.testing import Failure, OtlpReceiver

from .conftest import make_settings


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_shutdown_ends_the_exporters_retries_at_its_deadline(
    receiver: OtlpReceiver, tmp_path: Path, protocol: str
) -> None:
    """A 1 s shutdown during a retrying push returns in time, though the exporter's own timeout is 30 s."""
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    settings = make_settings(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT="30000",
        OTEL_METRIC_EXPORT_INTERVAL="100",
    )
    receiver.fail(Failure(count=10**9))
    metrics = create_metrics(settings, create_resource(settings, "test-instance"), scope="test")
    metrics.provider.get_meter("test").create_counter("things").add(1)
    time.sleep(1.0)  # a periodic push is under way, retrying with backoff
    assert metrics.reader.push_failures == 0
    started = time.monotonic()
    shutdown_quietly(metrics.provider, 1.0)
    assert time.monotonic() - started < 2.5


def test_an_outage_is_said_once_and_its_end_once(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """Pushes failing in a row log one metric_export_failed line; the next success one recovered line."""
    settings = make_settings(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
        OTEL_EXPORTER_OTLP_TIMEOUT="300",
        OTEL_METRIC_EXPORT_INTERVAL="3600000",  # pushes only when asked
    )
    metrics = create_metrics(settings, create_resource(settings, "test-instance"), scope="test")
    metrics.provider.get_meter("test").create_counter("things").add(1)
    receiver.fail(Failure(count=10**9, http_status=400))  # refused at once: no retry
    try:
        with structlog.testing.capture_logs() as logged:
            assert [metrics.reader.push() for _ in range(3)] == [False, False, False]
            receiver.heal()
            assert metrics.reader.push()
            assert metrics.reader.push()
    finally:
        shutdown_quietly(metrics.provider, 1.0)
    assert [(line["event"], line.get("failed_pushes")) for line in logged] == [
        ("metric_export_failed", None),
        ("metric_export_recovered", 3),
    ]
    assert logged[0]["scope"] == "test"
