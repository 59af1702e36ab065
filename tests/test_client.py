"""EventClient (threads) and AsyncEventClient against a real sidecar on a real TCP port."""

from __future__ import annotations

import asyncio
import gc
import io
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestServer

from otel_service import AsyncEventClient, EventClient
from otel_service.runtime.app import SERVER_OPTIONS
from otel_service.runtime.export_host import ThreadRunner

from .conftest import make_settings, start_in_process

MakeServer = Callable[..., Awaitable[TestServer]]
MakeRawServer = Callable[..., Awaitable[RawTestServer]]
KINDS = ["thread", "asyncio"]


def _event(i: int = 0, **changes: Any) -> dict[str, Any]:
    return {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "correlation_id": f"c-{i}", **changes}


INVALID = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": -1}


@dataclass
class Sidecar:
    """A running sidecar app with its exporter's stdout log captured."""

    url: str
    runner: ThreadRunner
    log: io.BytesIO

    def log_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.log.getvalue().splitlines() if line]

    async def caught_up(self) -> bool:
        return await asyncio.to_thread(self.runner.parts.worker.wait_idle, 10.0)

    async def detailed(self) -> dict[str, Any]:
        """GET /health/detailed (itself counted as one request)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/health/detailed") as response,
        ):
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body


@pytest.fixture
async def sidecar(aiohttp_raw_server: MakeRawServer, tmp_path: Path) -> AsyncIterator[Sidecar]:
    """The app wired as in conftest's start_app, served on a real TCP port."""
    log = io.BytesIO()
    app, runner = await start_in_process(make_settings(tmp_path), log)
    server = await aiohttp_raw_server(app.handle, **SERVER_OPTIONS)
    yield Sidecar(str(server.make_url("")).rstrip("/"), runner, log)
    await app.stop()


@pytest.fixture
def unreachable() -> Iterator[str]:
    """A URL whose port is bound but not listening: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent() -> Iterator[str]:
    """A URL whose port accepts connections (into the backlog) but never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Scripted:
    """A stub intake answering POST /v1/events with a scripted status sequence, counting hits."""

    url: str
    hits: list[int]


async def _scripted(aiohttp_server: MakeServer, statuses: list[int]) -> Scripted:
    hits: list[int] = []

    async def events(request: web.Request) -> web.Response:
        batch = await request.json()
        hits.append(len(batch))
        status = statuses[min(len(hits), len(statuses)) - 1]
        if status == 202:
            return web.json_response({"accepted": len(batch), "rejected": 0, "errors": []}, status=202)
        return web.json_response({"error": "unavailable"}, status=status, headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_post("/v1/events", events)
    server = await aiohttp_server(app)
    return Scripted(str(server.make_url("")).rstrip("/"), hits)


class Client:
    """One async surface over both clients, so each behaviour is checked for both."""

    def __init__(self, kind: str, url: str, **options: Any) -> None:
        self.kind = kind
        self.inner: EventClient | AsyncEventClient = (
            EventClient(url, **options) if kind == "thread" else AsyncEventClient(url, **options)
        )

    def send(self, event: Mapping[str, Any]) -> bool:
        return self.inner.send(event)

    async def flush(self, timeout: float = 5.0) -> bool:
        if isinstance(self.inner, EventClient):
            return await asyncio.to_thread(self.inner.flush, timeout)
        return await self.inner.flush(timeout)

    async def close(self, timeout: float = 5.0) -> None:
        if isinstance(self.inner, EventClient):
            await asyncio.to_thread(self.inner.close, timeout)
            # EventClient.close() leaves its keep-alive connection open (checked on its own by
            # test_thread_client_close_releases_its_connection); release it so that the other tests
            # check only their own behaviour.
            if self.inner._conn is not None:
                self.inner._conn.close()
        else:
            await self.inner.close(timeout)

    @property
    def sent(self) -> int:
        return self.inner.sent

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self.inner.dropped)


FAST = {"flush_interval": 0.02, "max_retries": 1}


@pytest.mark.parametrize("kind", KINDS)
async def test_events_arrive_at_the_sidecar_and_its_exporter(kind: str, sidecar: Sidecar) -> None:
    """Sent events are accepted by the sidecar and each becomes one exported log record."""
    client = Client(kind, sidecar.url, **FAST)
    assert all(client.send(_event(i)) for i in range(5))
    assert await client.flush()
    await client.close()
    assert (client.sent, client.dropped) == (5, {})
    assert await sidecar.caught_up()
    lines = sidecar.log_lines()
    assert sorted(line["correlation_id"] for line in lines) == [f"c-{i}" for i in range(5)]
    assert {(line["event"], line["kind"]) for line in lines} == {("llm_call", "llm_call")}
    detail = await sidecar.detailed()
    assert detail["events"] == {"accepted": {"llm_call": 5}, "rejected": {}}


async def test_thread_client_sends_many_events_in_few_requests(sidecar: Sidecar) -> None:
    """250 events queued at once leave in a handful of batched requests, not 250."""
    client = Client("thread", sidecar.url, batch_size=100, **FAST)
    for i in range(250):
        client.send(_event(i))
    assert await client.flush()
    await client.close()
    detail = await sidecar.detailed()
    assert detail["events"]["accepted"] == {"llm_call": 250}
    # The first batch may leave early with few events; the rest are full batches of 100.
    assert detail["requests"]["total"] - 1 <= 4
    assert client.sent == 250


async def test_async_client_sends_full_batches(sidecar: Sidecar) -> None:
    """Events queued before the worker runs leave in exactly ceil(n / batch_size) requests."""
    client = Client("asyncio", sidecar.url, batch_size=100, **FAST)
    for i in range(250):
        client.send(_event(i))
    assert await client.flush()
    await client.close()
    detail = await sidecar.detailed()
    assert detail["requests"]["total"] - 1 == 3
    assert detail["events"]["accepted"] == {"llm_call": 250}
    assert (client.sent, client.dropped) == (250, {})


@pytest.mark.parametrize("kind", KINDS)
async def test_rejected_items_are_counted_as_rejected(kind: str, sidecar: Sidecar) -> None:
    """Items the sidecar refuses count in dropped['rejected'], in a mixed batch and in an all-bad one."""
    client = Client(kind, sidecar.url, **FAST)
    client.send(_event(1))
    client.send(INVALID)
    client.send(_event(2))
    assert await client.flush()
    assert (client.sent, client.dropped) == (2, {"rejected": 1})
    client.send(INVALID)
    client.send(INVALID)
    assert await client.flush()
    await client.close()
    assert (client.sent, client.dropped) == (2, {"rejected": 3})
    detail = await sidecar.detailed()
    assert detail["events"] == {"accepted": {"llm_call": 2}, "rejected": {"invalid_field": 3}}


async def test_thread_client_drops_when_the_queue_is_full(unreachable: str) -> None:
    """With max_queue=1 and a dead sidecar, events beyond the queue are dropped as queue_full."""
    client = Client("thread", unreachable, max_queue=1, batch_size=1, **FAST)
    results = [client.send(_event(i)) for i in range(50)]
    assert results.count(False) >= 45
    assert client.dropped["queue_full"] == results.count(False)
    await client.close()
    assert client.sent == 0
    assert client.dropped == {"queue_full": results.count(False), "send_failed": results.count(True)}


async def test_async_client_drops_when_the_queue_is_full(unreachable: str) -> None:
    """With max_queue=1, a burst keeps one event and drops the rest as queue_full."""
    client = Client("asyncio", unreachable, max_queue=1, **FAST)
    assert [client.send(_event(i)) for i in range(50)] == [True] + [False] * 49
    assert client.dropped == {"queue_full": 49}
    await client.close()
    assert (client.sent, client.dropped) == (0, {"queue_full": 49, "send_failed": 1})


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_sidecar_counts_send_failed_and_never_raises(kind: str, unreachable: str) -> None:
    """Refused connections are retried, then the events count as send_failed; nothing raises."""
    client = Client(kind, unreachable, flush_interval=0.02, max_retries=2)
    for i in range(3):
        assert client.send(_event(i)) is True
    assert await client.flush()
    assert (client.sent, client.dropped) == (0, {"send_failed": 3})
    await client.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_retriable_answers_are_retried_max_retries_times(kind: str, aiohttp_server: MakeServer) -> None:
    """A sidecar answering 503 gets 1 + max_retries attempts per batch, then the batch is send_failed."""
    stub = await _scripted(aiohttp_server, [503])
    client = Client(kind, stub.url, flush_interval=0.02, max_retries=2)
    client.send(_event())
    assert await client.flush()
    await client.close()
    assert stub.hits == [1, 1, 1]
    assert (client.sent, client.dropped) == (0, {"send_failed": 1})


@pytest.mark.parametrize("kind", KINDS)
async def test_a_retry_that_succeeds_delivers(kind: str, aiohttp_server: MakeServer) -> None:
    """After 429 and 503 answers, a 202 on the third attempt counts the event as sent."""
    stub = await _scripted(aiohttp_server, [429, 503, 202])
    client = Client(kind, stub.url, flush_interval=0.02, max_retries=3)
    client.send(_event())
    assert await client.flush()
    await client.close()
    assert stub.hits == [1, 1, 1]
    assert (client.sent, client.dropped) == (1, {})


@pytest.mark.parametrize("kind", KINDS)
async def test_a_silent_sidecar_times_out_as_send_failed(kind: str, silent: str) -> None:
    """The request timeout applies: a sidecar that never answers costs timeout, then send_failed."""
    with warnings.catch_warnings():
        # The thread client leaks the timed-out socket: checked by its own test below.
        warnings.simplefilter("ignore", ResourceWarning)
        client = Client(kind, silent, flush_interval=0.02, max_retries=0, timeout=0.3)
        client.send(_event())
        assert await client.flush(timeout=3.0)
        await client.close()
        assert (client.sent, client.dropped) == (0, {"send_failed": 1})
        del client
        gc.collect()


def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def test_thread_client_close_releases_its_connection(sidecar: Sidecar) -> None:
    """close() closes the keep-alive HTTP connection instead of leaving the socket to the GC."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = EventClient(sidecar.url, flush_interval=0.02)
        client.send(_event())
        assert await asyncio.to_thread(client.flush, 5.0)
        assert client.sent == 1
        client.close(1.0)  # nothing left to send: no need to serve the sidecar meanwhile
        del client
        gc.collect()
    assert _resource_warnings(caught) == []


async def test_thread_client_closes_a_connection_it_gives_up_on(silent: str) -> None:
    """A connection abandoned after a timeout is closed, not leaked as an open socket."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = EventClient(silent, flush_interval=0.02, max_retries=0, timeout=0.3)
        client.send(_event())
        assert client.flush(3.0)  # the silent port is served by the kernel, not by this loop
        client.close(1.0)
        assert dict(client.dropped) == {"send_failed": 1}
        del client
        gc.collect()
    assert _resource_warnings(caught) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_send_after_close_is_dropped_as_closed(kind: str, sidecar: Sidecar) -> None:
    """Once closed, send() returns False and counts the event as closed; nothing is posted."""
    client = Client(kind, sidecar.url, **FAST)
    assert client.send(_event(1)) is True
    await client.close()
    assert client.send(_event(2)) is False
    assert client.send(_event(3)) is False
    assert (client.sent, client.dropped) == (1, {"closed": 2})
    detail = await sidecar.detailed()
    assert detail["events"]["accepted"] == {"llm_call": 1}


async def test_default_timeout_is_five_seconds() -> None:
    """Both clients default to a 5 s request timeout."""
    thread_client = EventClient()
    async_client = AsyncEventClient()
    try:
        assert thread_client._timeout == 5.0
        assert async_client._timeout == aiohttp.ClientTimeout(total=5.0)
    finally:
        await asyncio.to_thread(thread_client.close, 1.0)
        await async_client.close(1.0)
