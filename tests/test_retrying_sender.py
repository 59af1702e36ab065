"""The retrying sender around an OTLP sender: retries, permanent refusals, jitter, the stop deadline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_service.export.delivery import (
    JITTER,
    PRESSING_BACKOFF_MAX,
    ExportStatus,
    Observer,
    RetryingSender,
)
from otel_service.export.sender import SendResult
from otel_service.telemetry.instruments import WorkerInstruments
from otel_service.telemetry.providers import Metrics, create_metrics, create_resource, shutdown_quietly

from .conftest import make_settings


class ScriptedSender:
    """A Sender that answers each call with the next result of its script (then success)."""

    def __init__(self, *results: SendResult) -> None:
        self.results = list(results)
        self.calls: list[str] = []

    def send(self, signal: str, payload: bytes) -> SendResult:
        self.calls.append(signal)
        return self.results.pop(0) if self.results else SendResult(True)

    def close(self) -> None:
        pass


@pytest.fixture
def observer(tmp_path: Path) -> Iterator[Observer]:
    settings = make_settings(tmp_path)
    metrics: Metrics = create_metrics(settings, create_resource(settings, "t"), scope="otel_service.export")
    yield Observer(
        ExportStatus(enabled=True),
        WorkerInstruments.create(metrics.aggregates),
    )
    shutdown_quietly(metrics.provider, 1.0)


def test_retryable_failures_are_retried_until_accepted(observer: Observer) -> None:
    """Two transient failures, then success: three attempts, two retries, every item delivered once."""
    sender = ScriptedSender(
        SendResult(False, retry=True, error="HTTP 503"), SendResult(False, retry=True, retry_after=0.01)
    )
    assert RetryingSender(sender, observer, lambda: False).send({"traces": b"t"}, {"traces": 5})
    status = observer.status
    assert (sender.calls, status.attempts, status.failures, status.retries) == (["traces"] * 3, 3, 2, 2)
    assert (dict(status.exported), status.state, status.last_error) == ({"traces": 5}, "idle", "traces: ")


def test_a_permanent_refusal_is_dropped_and_counted_while_the_rest_is_delivered(observer: Observer) -> None:
    """A non-retryable answer for one signal: its items are counted as dropped, the other signal goes."""
    sender = ScriptedSender(SendResult(False, retry=False, error="HTTP 400"))
    assert RetryingSender(sender, observer, lambda: False).send(
        {"traces": b"t", "logs": b"l"}, {"traces": 3, "logs": 4}
    )
    assert dict(observer.status.dropped) == {"rejected_permanently": 3}
    assert dict(observer.status.exported) == {"logs": 4}


def test_the_stop_deadline_ends_the_retries(observer: Observer) -> None:
    """Past the deadline, a failing batch is given up (it stays in the spool): send returns False."""
    sender = ScriptedSender(*[SendResult(False, retry=True, error="down")] * 5)
    assert not RetryingSender(sender, observer, lambda: True).send({"traces": b"t"}, {"traces": 1})
    assert sender.calls == ["traces"]


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 1 - JITTER), (0.5, 1.0), (1.0, 1 + JITTER)])
def test_backoff_waits_are_jittered_within_bounds(observer: Observer, draw: float, factor: float) -> None:
    """Each backoff is drawn within ±JITTER of its nominal value (Retry-After is taken as sent)."""
    retrying = RetryingSender(ScriptedSender(), observer, lambda: False, random=lambda: draw)
    assert retrying._backoff_wait(2.0) == pytest.approx(2.0 * factor)


@pytest.mark.parametrize("pressing", [False, True])
def test_a_backlog_near_its_bound_shortens_the_backoff(observer: Observer, pressing: bool) -> None:
    """While intake refuses (or is about to), retries probe every PRESSING_BACKOFF_MAX seconds at most."""
    retrying = RetryingSender(
        ScriptedSender(), observer, lambda: False, pressing=lambda: pressing, random=lambda: 0.5
    )
    assert retrying._backoff_wait(30.0) == (PRESSING_BACKOFF_MAX if pressing else 30.0)
