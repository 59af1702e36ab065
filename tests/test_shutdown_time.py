"""SIGTERM ends the sidecar within OTELSVC_SHUTDOWN_TIMEOUT: every stop step shares the one deadline.

The bounds are correctness bounds (the shutdown timeout plus a generous margin for process exits), not
speed measurements: before, each step waited on its own clock (requests in progress, then the export
process, then a metric push to a collector that never answers, bounded only by its own 10 s timeout).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from otel_service.testing import OtlpReceiver

from .conftest import Sidecar

EVENT = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 12, "input_tokens": 5, "business_id": "b"}
#: Process exits and scheduling, on top of the shutdown timeout.
MARGIN = 3.0


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A collector endpoint that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:  # never accepts
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _backlog(sidecar: Sidecar, batches: int = 4) -> int:
    """Events accepted while nothing can be delivered: they wait in the spool."""
    accepted = 0
    for _ in range(batches):
        status, answer = sidecar.post("/v1/events", [EVENT] * 25)
        assert status == 202
        accepted += int(answer["accepted"])  # type: ignore[call-overload]
    return accepted


def _sigterm(sidecar: Sidecar) -> float:
    """Seconds from SIGTERM until the sidecar exited (a clean exit) and every child let go of its output."""
    started = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)
    _, err = sidecar.process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert sidecar.process.returncode == 0, err.decode()
    return elapsed


def _children(sidecar: Sidecar) -> list[psutil.Process]:
    return psutil.Process(sidecar.process.pid).children(recursive=True)


def _exit(processes: list[psutil.Process], timeout: float = 5.0) -> bool:
    """Whether ``processes`` all exit within ``timeout`` seconds (the resource tracker sees its pipe end)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_a_collector_that_never_answers_holds_the_exit_no_longer_than_the_timeout(
    serve: Callable[..., Sidecar], blackhole: str, receiver: OtlpReceiver
) -> None:
    """Collector blackholed, a backlog spooled: exit within the timeout; a restart delivers it all."""
    sidecar = serve(OTEL_EXPORTER_OTLP_ENDPOINT=blackhole, OTELSVC_SHUTDOWN_TIMEOUT="1")
    accepted = _backlog(sidecar)
    assert _sigterm(sidecar) < 1 + MARGIN
    restarted = serve(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
    try:
        assert receiver.wait_for_spans(accepted, 30)
        assert len({s.span_id for s in receiver.spans()}) == accepted
    finally:
        restarted.process.terminate()
        restarted.process.communicate(timeout=30)


def test_slow_clients_intake_processes_and_a_dead_collector_share_one_deadline(
    serve: Callable[..., Sidecar], blackhole: str
) -> None:
    """Two intake processes, keep-alive and mid-request clients, collector blackholed: one deadline."""
    sidecar = serve(
        OTEL_EXPORTER_OTLP_ENDPOINT=blackhole, OTELSVC_SHUTDOWN_TIMEOUT="2", OTELSVC_INTAKE_PROCESSES="2"
    )
    _backlog(sidecar)
    body = json.dumps([EVENT]).encode()
    head = b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    clients = []
    for _ in range(4):  # idle keep-alive connections, spread over the processes
        idle = socket.create_connection(("127.0.0.1", sidecar.port))
        idle.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert idle.recv(65536).startswith(b"HTTP/1.1 202")
        clients.append(idle)
    for _ in range(4):  # slow clients: the headers, then a body that never ends
        slow = socket.create_connection(("127.0.0.1", sidecar.port))
        slow.sendall(head + b"Content-Length: 1000\r\n\r\n[")
        clients.append(slow)
    children = _children(sidecar)
    try:
        assert _sigterm(sidecar) < 2 + MARGIN
    finally:
        for client in clients:
            client.close()
    assert _exit(children)
