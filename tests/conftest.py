"""Shared fixtures: settings in a temp dir, a real in-process OTLP receiver, a running app."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import RawTestServer, TestClient
from opentelemetry.sdk.metrics.export import MetricsData

from otel_service.config import Settings
from otel_service.model.events import Event
from otel_service.runtime.app import SERVER_OPTIONS, App, create_app
from otel_service.runtime.export_host import ThreadRunner, wire_export
from otel_service.spool.checkpoint import Identity
from otel_service.spool.record import Envelope
from otel_service.telemetry.providers import create_metrics, create_resource
from otel_service.testing import OtlpReceiver

FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "50",
    "OTEL_BLRP_SCHEDULE_DELAY": "50",
    "OTEL_METRIC_EXPORT_INTERVAL": "200",
    "OTELSVC_EXPORT_MODE": "thread",
}


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings of an in-process app: one intake process (``serve`` starts the others; tests that use
    them run the real command)."""
    base = {"OTELSVC_SPOOL_DIR": str(tmp_path / "spool"), "OTELSVC_INTAKE_PROCESSES": "1", **FAST_EXPORT}
    return Settings.from_env({**base, **env})


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@dataclass
class Harness:
    """A running app (export in a thread) with its stdout log lines captured."""

    client: TestClient[Any, Any]
    app: App
    settings: Settings
    runner: ThreadRunner
    log: io.BytesIO

    def log_lines(self) -> list[bytes]:
        return [line for line in self.log.getvalue().splitlines() if line]

    def caught_up(self, timeout: float = 10.0) -> bool:
        """Wait until the exporter has processed (and delivered) everything accepted so far."""
        return self.runner.parts.worker.wait_idle(timeout)

    def metrics(self) -> MetricsData:
        """What the exporter's reader would export now (SDK and in-process instruments)."""
        data = self.runner.parts.metrics.reader.snapshot()
        assert data is not None
        return data


def point_values(data: MetricsData, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    """Data points of metric ``name`` keyed by their attribute set (sum value, or histogram point)."""
    found: dict[frozenset[tuple[str, Any]], Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    value = getattr(point, "value", point)
                    found[frozenset(point.attributes.items())] = value
    return found


StartApp = Callable[..., Awaitable[Harness]]


def envelope(n: int, **event: Any) -> Envelope:
    """The ``n``-th spooled LLM call (trace ID ``n + 1``, correlation ID ``c-n``)."""
    return Envelope(
        event=msgspec.convert({"kind": "llm_call", "model": "gpt-4o", "duration_ms": 100, **event}, Event),
        trace_id=f"{n + 1:032x}",
        span_id=f"{n + 1:016x}",
        parent_span_id=None,
        correlation_id=f"c-{n}",
        end_ns=time.time_ns(),
        received_ns=time.time_ns(),
        source="events",
    )


async def start_in_process(settings: Settings, log: io.BytesIO) -> tuple[App, ThreadRunner]:
    """The app wired as in production, with export in a thread writing its log lines to ``log``;
    started (the caller stops it)."""
    identity = Identity("test-instance", time.time_ns())
    resource = create_resource(settings, identity.instance_id)
    runner = ThreadRunner(wire_export(settings, identity=identity, log_stream=log))
    intake = create_metrics(settings, resource, scope="otel_service.intake", target_info=False)
    app = create_app(settings, runner=runner, metrics=intake)
    await app.start()
    return app, runner


@pytest.fixture
async def start_app(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    aiohttp_raw_server: Callable[..., Awaitable[RawTestServer]],
    tmp_path: Path,
) -> AsyncIterator[StartApp]:
    apps: list[App] = []

    async def start(**env: str) -> Harness:
        settings = make_settings(tmp_path, **env)
        log = io.BytesIO()
        app, runner = await start_in_process(settings, log)
        apps.append(app)
        client = await aiohttp_client(await aiohttp_raw_server(app.handle, **SERVER_OPTIONS))
        return Harness(client, app, settings, runner, log)

    yield start
    for app in apps:
        await app.stop()


# -- the command as a real process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "otel_service", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[call-overload]
    )


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"sidecar on port {port} not ready in {timeout} s")


class Sidecar:
    """An ``otel-service serve`` process on a free port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def post(
        self, path: str, body: object, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body


@pytest.fixture
def sidecar_env(tmp_path: Path) -> dict[str, str]:
    return {
        **FAST_EXPORT,
        "OTELSVC_EXPORT_MODE": "process",
        "OTELSVC_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # only the shutdown flush exports metrics
    }


@pytest.fixture
def serve(sidecar_env: dict[str, str]) -> Iterator[Callable[..., Sidecar]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> Sidecar:
        port = free_port()
        process = run_cli("serve", "--port", str(port), env={**sidecar_env, **env})
        started.append(process)
        try:
            wait_ready(port)
        except AssertionError:
            process.kill()
            _out, err = process.communicate()
            raise AssertionError(err.decode()) from None
        return Sidecar(process, port)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()
