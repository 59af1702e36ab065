"""The ``otel-service`` command as a real process: serve, send, graceful shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from otel_service import __version__
from otel_service.testing import OtlpReceiver

from .conftest import free_port, run_cli


def test_version() -> None:
    """--version prints the package version."""
    result = subprocess.run(
        [sys.executable, "-m", "otel_service", "--version"], capture_output=True, check=True
    )
    assert result.stdout.decode().strip() == f"otel-service {__version__}"


def test_refuses_to_bind_beyond_loopback_without_a_token(sidecar_env: dict[str, str]) -> None:
    """Binding 0.0.0.0 without OTELSVC_AUTH_TOKEN exits 2 with a clear message."""
    process = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=sidecar_env)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert b"OTELSVC_AUTH_TOKEN" in err


def test_a_taken_port_exits_2_with_a_clear_message(sidecar_env: dict[str, str]) -> None:
    """Another process listening on the port: exit 2 naming the address, no traceback."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = run_cli("serve", "--port", str(port), env=sidecar_env)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err.decode()
    assert f"cannot listen on 127.0.0.1:{port}".encode() in err
    assert b"Traceback" not in err


def test_sigterm_flushes_every_signal_and_exits_zero(serve, receiver: OtlpReceiver) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM: intake stops, spans, logs and metrics are all delivered, and the exit code is 0."""
    sidecar = serve(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_BLRP_SCHEDULE_DELAY="60000",
    )
    events = [{"kind": "llm_call", "model": "gpt-4o", "duration_ms": 10, "business_id": "b"}] * 50
    for _ in range(4):
        status, answer = sidecar.post("/v1/events", events)
        assert (status, answer["accepted"]) == (202, 50)
    sidecar.process.send_signal(signal.SIGTERM)
    out, err = sidecar.process.communicate(timeout=60)
    assert sidecar.process.returncode == 0, err.decode()
    assert len(receiver.spans()) == 200
    assert len(receiver.logs()) == 200
    assert len({span.span_id for span in receiver.spans()}) == 200
    counts = [
        point.count
        for metric in receiver.metrics()
        if metric.name == "gen_ai.client.operation.duration"
        for point in metric.histogram.data_points
    ]
    assert counts
    assert counts[-1] == 200
    stdout_lines = [line for line in out.splitlines() if line.startswith(b"{")]
    assert len(stdout_lines) == 200


def test_send_posts_a_sample_event_and_prints_the_result(serve) -> None:  # type: ignore[no-untyped-def]
    """`otel-service send` posts the sample LLM call and prints the per-item result."""
    sidecar = serve()
    result = subprocess.run(
        [sys.executable, "-m", "otel_service", "send", "--url", f"http://127.0.0.1:{sidecar.port}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert text.startswith("HTTP 202")
    assert json.loads(text[text.index("{") :])["accepted"] == 1


def test_send_a_file_of_events(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`otel-service send FILE.ndjson` posts NDJSON and reports rejected items with exit 0."""
    sidecar = serve()
    path = tmp_path / "events.ndjson"
    path.write_text('{"kind":"llm_call","model":"m","duration_ms":1}\n{"kind":"feedback","model":"m"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "otel_service", "send", str(path), "--url",
         f"http://127.0.0.1:{sidecar.port}"],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    answer = json.loads(result.stdout.decode()[result.stdout.decode().index("{") :])
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["errors"][0]["index"] == 1


def test_embedded_default_serves_metrics_without_a_collector(serve) -> None:  # type: ignore[no-untyped-def]
    """With no OTLP endpoint, /metrics in the child-process mode shows the recorded events."""
    sidecar = serve()
    status, _ = sidecar.post("/track", {"business_id": "b1", "response_time_ms": 20, "tokens_used": 7})
    assert status == 202
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = sidecar.get("/metrics").decode()
        # The request may reach the other intake process, whose counts are up to 0.25 s old.
        if "ai_tokens_used_total{" in text and "otel_service_events_received_total{" in text:
            break
        time.sleep(0.1)
    assert 'ai_tokens_used_total{business_id="b1",model="gemini-1.5-flash"' in text
    assert "otel_service_events_received_total{" in text
    assert text.count("# TYPE target_info gauge") == 1
    detail = json.loads(sidecar.get("/health/detailed"))
    assert detail["export"]["enabled"] is False
    assert detail["export"]["processed"] == 1


def _diagnostics(err: bytes) -> list[dict[str, object]]:
    """stderr as the JSON objects it must consist of (fails on any other line)."""
    return [json.loads(line) for line in err.decode().splitlines() if line.strip()]


def test_diagnostics_are_json_lines_and_listening_comes_after_the_bind(sidecar_env: dict[str, str]) -> None:
    """A taken port: stderr is JSON lines with stable event names, and never claims to be listening."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = run_cli("serve", "--port", str(port), env=sidecar_env)
        _, err = process.communicate(timeout=60)
    lines = _diagnostics(err)
    assert [(line["event"], line["level"], line["process"]) for line in lines] == [
        ("cannot_listen", "error", "intake-0")
    ]
    assert f"127.0.0.1:{port}" in str(lines[0]["message"])


def test_a_second_sidecar_on_one_spool_says_how_to_run_it(serve, sidecar_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The spool in use: exit 2 with a JSON line whose hint names OTELSVC_SPOOL_DIR."""
    serve()
    process = run_cli("serve", "--port", str(free_port()), env=sidecar_env)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err.decode()
    [line] = [line for line in _diagnostics(err) if line["event"] == "spool_in_use"]
    assert "OTELSVC_SPOOL_DIR" in str(line["hint"])


def test_a_running_sidecar_says_listening_once_as_json(serve) -> None:  # type: ignore[no-untyped-def]
    """Started, stopped: stderr is JSON, one 'listening' line names the address, nothing shuts down twice."""
    sidecar = serve()
    sidecar.process.send_signal(signal.SIGTERM)
    _, err = sidecar.process.communicate(timeout=60)
    lines = _diagnostics(err)
    listening = [line for line in lines if line["event"] == "listening"]
    assert [line["message"] for line in listening] == [
        f"otel-service {__version__} listening on http://127.0.0.1:{sidecar.port}"
    ]
    assert [line for line in lines if "can only be called once" in str(line.get("message"))] == []
