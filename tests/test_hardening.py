"""Client input measured to cause 5xx, and abusive requests: each a counted JSON 4xx naming the field."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
import urllib.error
from pathlib import Path

import psutil
import pytest

import otel_service
from otel_service.spool import stats
from otel_service.testing import OtlpReceiver

from .conftest import StartApp

#: (path, body, status, error, field): the fuzz campaign's reproducers (issue "Hardening", defect 2).
FIVE_HUNDREDS = [
    ("/track", b'{"business_id":"\xff"}', 400, "invalid_encoding", "$"),
    ("/v1/events", b'{"kind":[]}', 400, "invalid_field", "$.kind"),
    ("/v1/events", b'{"kind":{"a":1}}', 400, "invalid_field", "$.kind"),
    ("/v1/events", b'{"a":{"x":1,"x":2},', 400, "malformed_json", "$"),
    ("/v1/events", b'{"a":{"x":1,"x":2},"b":' + b"[" * 100_000, 400, "too_deep", "$.b" + "[0]" * 31),
    ("/v1/events", b'{"a":{"x":1,"x":2},"b":' + b"1" * 5000 + b"}", 400, "invalid_number", "$.b"),
    ("/track", b'{"a":{"x":1,"x":2},"b":' + b"1" * 5000 + b"}", 400, "invalid_number", "$.b"),
]


@pytest.mark.parametrize(("path", "body", "status", "error", "field"), FIVE_HUNDREDS)
async def test_input_that_caused_a_500_is_a_counted_4xx(
    start_app: StartApp, path: str, body: bytes, status: int, error: str, field: str
) -> None:
    """Each reproducer: a JSON 4xx with its reason and field, counted; the next valid event is accepted."""
    app = await start_app()
    response = await app.client.post(path, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    if "errors" in answer:  # /v1/events judges each item
        [answer] = answer["errors"]
    assert (response.status, answer["error"], answer["field"]) == (status, error, field)
    detail = await (await app.client.get("/health/detailed")).json()
    assert detail["events"]["rejected"] == {error: 1}


async def test_a_non_utf8_authorization_header_is_a_401(start_app: StartApp) -> None:
    """A token is set and the Authorization header holds a byte that is not UTF-8: 401, not 500."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    reader, writer = await asyncio.open_connection(app.client.host, app.client.port)
    writer.write(
        b"POST /track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer s3\xffcret\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    await writer.drain()
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    answer = json.loads(body)
    assert (head.split(b" ")[1], answer["error"], answer["field"]) == (
        b"401",
        "unauthorized",
        "Authorization",
    )


async def test_a_cors_preflight_is_answered_before_the_token_is_asked_for(start_app: StartApp) -> None:
    """With a token and an allowed origin, the browser's preflight gets 204 (it carries no credentials)."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret", OTELSVC_CORS_ORIGINS="https://app.example")
    origin = {"Origin": "https://app.example"}
    preflight = await app.client.options(
        "/v1/events", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    posted = await app.client.post(
        "/v1/events", json=event, headers={**origin, "Authorization": "Bearer s3cret"}
    )
    assert posted.status == 202
    assert posted.headers["Access-Control-Allow-Origin"] == "https://app.example"
    refused = await app.client.post("/v1/events", json=event, headers=origin)
    assert refused.status == 401


async def test_answers_vary_by_origin_once_cors_is_configured(start_app: StartApp) -> None:
    """An origin that is not allowed gets no CORS headers but Vary: Origin, so caches keep them apart."""
    app = await start_app(OTELSVC_CORS_ORIGINS="https://app.example")
    response = await app.client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize(
    ("env", "host", "status"),
    [
        ({}, "attacker.example", 403),
        ({}, "attacker.example:5001", 403),
        ({}, "localhost:5001", 200),
        ({}, "127.0.0.1", 200),
        ({}, "[::1]:5001", 200),
        ({"OTELSVC_ALLOWED_HOSTS": "sidecar.internal"}, "sidecar.internal:5001", 200),
        ({"OTELSVC_AUTH_TOKEN": "t"}, "attacker.example", 401),  # the token is the guard then
    ],
)
async def test_without_a_token_only_our_host_names_are_served(
    start_app: StartApp, env: dict[str, str], host: str, status: int
) -> None:
    """DNS rebinding: a request for another Host name is refused (403 naming Host) unless a token is set."""
    app = await start_app(**env)
    response = await app.client.get("/health/detailed", headers={"Host": host})
    assert response.status == status
    if status == 403:
        answer = await response.json()
        assert (answer["error"], answer["field"]) == ("host_not_allowed", "Host")
        detail = await (await app.client.get("/health/detailed")).json()
        assert detail["events"]["rejected"] == {"host_not_allowed": 1}


async def test_the_server_header_names_no_versions(start_app: StartApp) -> None:
    """The Server header says what answers, not which Python and aiohttp versions."""
    app = await start_app()
    for response in (await app.client.get("/health"), await app.client.get("/nowhere")):
        assert response.headers["Server"] == "otel-service"


def test_the_spool_and_its_sockets_are_the_owners_only(serve, sidecar_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The spool directory is 0700 and the unix sockets in it 0600, whatever the umask."""
    old = os.umask(0)
    try:
        serve(OTELSVC_INTAKE_PROCESSES="2")
    finally:
        os.umask(old)
    spool = Path(sidecar_env["OTELSVC_SPOOL_DIR"])
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in (spool, spool / "export.sock", spool / "intake.sock")
    }
    assert modes == {"spool": 0o700, "export.sock": 0o600, "intake.sock": 0o600}


async def test_the_largest_valid_token_counts_do_not_wedge_metric_export(
    receiver: OtlpReceiver, start_app: StartApp
) -> None:
    """Token counts up to 2^63-1 are valid: their sums must still encode, so every push succeeds."""
    app = await start_app(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint, OTEL_METRIC_EXPORT_INTERVAL="3600000"
    )
    most = 2**63 - 1
    event = {
        "kind": "llm_call",
        "model": "gpt-4o",
        "duration_ms": 5,
        "input_tokens": most,
        "output_tokens": most,
    }
    for _ in range(2):
        assert (await app.client.post("/v1/events", json=event)).status == 202
    assert app.caught_up()
    reader = app.runner.parts.metrics.reader
    assert reader.push(timeout=5)
    assert reader.push_failures == 0
    assert receiver.metric_total("ai_tokens_used") == pytest.approx(4 * most)
    assert app.runner.parts.worker.save_cursor() is None
    assert (
        app.runner.parts.worker._reader.cursor.committed == app.runner.parts.worker._reader.cursor.delivered
    )


async def test_an_ndjson_body_of_blank_lines_is_a_counted_empty_batch(start_app: StartApp) -> None:
    """Blank lines only: 400 empty_batch naming the body, counted (was a 400 without error or count)."""
    app = await start_app()
    response = await app.client.post(
        "/v1/events", data=b"\n \r\n\n", headers={"Content-Type": "application/x-ndjson"}
    )
    answer = await response.json()
    assert (response.status, answer["error"], answer["field"]) == (400, "empty_batch", "$")
    detail = await (await app.client.get("/health/detailed")).json()
    assert detail["events"]["rejected"] == {"empty_batch": 1}


def _raw(port: int, data: bytes) -> tuple[int, dict[str, object], bytes]:
    """Send ``data`` as is; the answer's status, JSON body and raw head."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body), head


def test_requests_aiohttp_cannot_parse_get_counted_json_answers(serve) -> None:  # type: ignore[no-untyped-def]
    """A bad request line or an over-long header: JSON 400, counted, one log line (not a traceback each)."""
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="1")
    bad = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"] * 3
    for data in bad:
        status, answer, head = _raw(sidecar.port, data)
        assert (status, answer["error"], answer["field"]) == (400, "malformed_http_request", "$request")
        assert b"application/json" in head
    detail = json.loads(sidecar.get("/health/detailed"))
    assert detail["events"]["rejected"] == {"malformed_http_request": 6}
    sidecar.process.terminate()
    _, err = sidecar.process.communicate(timeout=60)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert [line["count"] for line in lines if line["event"] == "http_requests_refused"] == [1]
    assert [line for line in lines if line["event"] == "library_log" and "exception" in line] == []


async def test_delivered_events_leave_the_disk_without_a_metric_push(
    receiver: OtlpReceiver, start_app: StartApp
) -> None:
    """No metric push for an hour: the totals are checkpointed anyway and delivered events are freed."""
    bound = 65536
    app = await start_app(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
        OTEL_METRIC_EXPORT_INTERVAL="3600000",  # no push during the test
        OTELSVC_SPOOL_MAX_BYTES=str(bound),
    )
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1, "conversation_id": "c" * 200}
    for _ in range(80):  # 240 KB in all: past the disk ceiling (twice the bound) unless freed
        response = await app.client.post("/v1/events", json=[event] * 10)
        assert response.status == 202, await response.text()
        assert app.caught_up()
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 10
    while stats(app.settings.spool_dir).bytes > bound // 4:
        assert time.monotonic() < deadline, stats(app.settings.spool_dir)
        await asyncio.sleep(0.1)


def _export_process(sidecar) -> psutil.Process:  # type: ignore[no-untyped-def]
    """The sidecar's export process (with one intake process: its only spawned child but the tracker)."""
    children = psutil.Process(sidecar.process.pid).children()
    [export] = [p for p in children if "spawn_main" in " ".join(p.cmdline())]
    return export


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_killed_export_process_is_restarted_and_nothing_is_lost(serve, receiver: OtlpReceiver) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the export process: /metrics and /health answer, it is restarted, nothing is lost."""
    sidecar = serve(
        OTELSVC_INTAKE_PROCESSES="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    assert sidecar.post("/v1/events", [event] * 10)[0] == 202
    victim = _export_process(sidecar)
    victim.kill()
    victim.wait(10)
    assert b"otel_service" in sidecar.get("/metrics")  # the intake's own metrics still answer
    assert json.loads(sidecar.get("/health"))["status"] == "healthy"
    assert sidecar.post("/v1/events", [event] * 10)[0] == 202
    _wait(lambda: json.loads(sidecar.get("/health/detailed"))["export"].get("restarts") == 1)
    assert _export_process(sidecar).pid != victim.pid
    assert receiver.wait_for_spans(20)
    sidecar.process.terminate()
    _, err = sidecar.process.communicate(timeout=60)
    events = [json.loads(line)["event"] for line in err.decode().splitlines() if line.strip()]
    assert ("export_process_exited" in events, "export_process_restarted" in events) == (True, True)


def test_liveness_fails_when_the_export_process_cannot_be_started_again(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    """The export process dies and every restart fails (its price table is gone): /health answers 503."""
    prices = tmp_path / "prices.json"
    prices.write_bytes((Path(otel_service.__file__).parent / "model" / "prices.json").read_bytes())
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="1", OTELSVC_PRICE_TABLE=str(prices))
    prices.unlink()
    _export_process(sidecar).kill()

    def unhealthy() -> bool:
        try:
            sidecar.get("/health")
        except urllib.error.HTTPError as exc:
            return exc.code == 503
        return False

    _wait(unhealthy, timeout=60)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_resends_after_an_export_timeout_are_counted_as_possible_duplicates(
    receiver: OtlpReceiver, start_app: StartApp, protocol: str
) -> None:
    """A collector slower than the OTLP timeout takes a batch twice: every extra copy is counted."""
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    app = await start_app(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT="300",
    )
    receiver.delay = 0.6  # it stores each request, then answers after the client gave up
    event = {"kind": "llm_call", "model": "m", "duration_ms": 1}
    assert (await app.client.post("/v1/events", json=[event] * 5)).status == 202
    await asyncio.sleep(1.0)
    receiver.delay = 0.0
    assert app.caught_up(20)
    await asyncio.sleep(0.7)  # the last slow request lands
    extra = receiver.counts["traces"] + receiver.counts["logs"] - 10
    assert extra > 0
    status = app.runner.parts.worker.status
    assert status.duplicates >= extra


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading whatever it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_idle_and_slow_connections_are_closed_at_the_header_deadline(serve) -> None:  # type: ignore[no-untyped-def]
    """A connection that sends nothing, or its headers a byte at a time, is closed and counted."""
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="1", OTELSVC_HEADER_TIMEOUT="1")
    idle = socket.create_connection(("127.0.0.1", sidecar.port))
    slow = socket.create_connection(("127.0.0.1", sidecar.port))
    started = time.monotonic()
    slow.sendall(b"POST /track HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    while time.monotonic() - started < 3 and slow.fileno() >= 0:
        try:
            slow.sendall(b"X")
        except OSError:
            break
        time.sleep(0.2)
    assert _closed_within(idle, 3)
    assert _closed_within(slow, 3)
    detail = json.loads(sidecar.get("/health/detailed"))
    assert detail["events"]["rejected"].get("header_timeout") == 2
    idle.close()
    slow.close()


def test_a_flood_of_connections_from_one_client_leaves_room_for_the_others(serve) -> None:  # type: ignore[no-untyped-def]
    """Beyond the per-client bound, a client's new connections are closed; another address is served."""
    sidecar = serve(
        OTELSVC_INTAKE_PROCESSES="1", OTELSVC_MAX_CONNECTIONS_PER_CLIENT="3", OTELSVC_HEADER_TIMEOUT="60"
    )
    flood = [socket.create_connection(("127.0.0.1", sidecar.port)) for _ in range(6)]
    assert [_closed_within(sock, 1) for sock in flood] == [False] * 3 + [True] * 3
    other = socket.create_connection(("127.0.0.1", sidecar.port), source_address=("127.0.0.2", 0))
    body = json.dumps({"kind": "llm_call", "model": "m", "duration_ms": 1}).encode()
    other.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert other.recv(65536).startswith(b"HTTP/1.1 202")
    for sock in (*flood, other):
        sock.close()
    detail = json.loads(sidecar.get("/health/detailed"))
    assert detail["events"]["rejected"].get("too_many_connections_from_client") == 3
    sidecar.process.terminate()
    _, err = sidecar.process.communicate(timeout=60)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert [line["event"] for line in lines if line["level"] in ("warning", "error")] == [
        "connections_refused"
    ]
