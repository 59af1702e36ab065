"""The clients carry the app's current OpenTelemetry span to the sidecar as W3C ``traceparent``."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from otel_service.runtime.app import SERVER_OPTIONS
from otel_service.testing import OtlpReceiver

from .conftest import make_settings, start_in_process
from .test_client import FAST, KINDS, Client

#: The app's own spans come from a real SDK tracer (not the global provider).
TRACER = TracerProvider().get_tracer("the-app")
#: An upstream parent with a ``tracestate`` that the app's span inherits.
UPSTREAM = SpanContext(
    int("4bf92f3577b34da6a3ce929d0e0e4736", 16),
    int("00f067aa0ba902b7", 16),
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque")]),
)


@contextmanager
def app_span(parent: SpanContext | None = None) -> Iterator[SpanContext]:
    """A started SDK span, current while the block runs (a child of ``parent`` if given)."""
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
    with TRACER.start_as_current_span("handle request", context=context) as span:
        yield span.get_span_context()


def _event(correlation_id: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "llm_call", "model": "m", "duration_ms": 5, "correlation_id": correlation_id, **changes}


@pytest.fixture
async def sidecar(
    aiohttp_raw_server: Callable[..., Awaitable[RawTestServer]], tmp_path: Path, receiver: OtlpReceiver
) -> AsyncIterator[str]:
    """A sidecar on a real TCP port exporting over OTLP/gRPC to ``receiver``; its URL."""
    settings = make_settings(
        tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    app, _ = await start_in_process(settings, io.BytesIO())
    server = await aiohttp_raw_server(app.handle, **SERVER_OPTIONS)
    yield str(server.make_url("")).rstrip("/")
    await app.stop()


@dataclass
class Recorder:
    """A stub intake that answers 202 and keeps each request's trace headers and correlation IDs."""

    url: str = ""
    requests: list[tuple[dict[str, str], list[str]]] = field(default_factory=list)

    def by_event(self) -> dict[str, dict[str, str]]:
        """correlation ID -> the trace headers of the request that carried the event."""
        return {cid: headers for headers, cids in self.requests for cid in cids}


@pytest.fixture
async def recorder(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Recorder:
    recorded = Recorder()

    async def events(request: web.Request) -> web.Response:
        batch = await request.json()
        headers = {k: request.headers[k] for k in ("traceparent", "tracestate") if k in request.headers}
        recorded.requests.append((headers, [item["correlation_id"] for item in batch]))
        return web.json_response({"accepted": len(batch), "rejected": 0, "errors": []}, status=202)

    app = web.Application()
    app.router.add_post("/v1/events", events)
    recorded.url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    return recorded


async def _send(kind: str, url: str, events: list[tuple[SpanContext | None, Mapping[str, Any]]]) -> None:
    """Send each event while its span (if any) is current; flushed and closed, all sent."""
    client = Client(kind, url, **FAST)
    for parent, event in events:
        if parent is None:
            assert client.send(event)
        else:
            with app_span(parent):
                assert client.send(event)
    assert await client.flush()
    await client.close()
    assert (client.sent, client.dropped) == (len(events), {})


def _traceparent(span: SpanContext) -> str:
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_sidecars_span_joins_the_apps_current_span(
    kind: str, sidecar: str, receiver: OtlpReceiver
) -> None:
    """An event sent in a started SDK span gives a sidecar span in its trace, its child, with tracestate."""
    client = Client(kind, sidecar, **FAST)
    with app_span(UPSTREAM) as span:
        assert client.send(_event("in-span"))
    assert await client.flush()
    await client.close()
    assert receiver.wait_for_spans(1)
    [received] = receiver.spans()
    assert (received.trace_id.hex(), received.parent_span_id.hex(), received.trace_state, received.flags) == (
        f"{span.trace_id:032x}",
        f"{span.span_id:016x}",
        "vendor=opaque",
        0x301,  # sampled, with a remote parent
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_an_events_own_trace_and_span_ids_win(kind: str, sidecar: str, receiver: OtlpReceiver) -> None:
    """Inside an app span, an event naming its own trace_id and span_id is parented on those."""
    own = {"trace_id": "ab" * 16, "span_id": "cd" * 8}
    client = Client(kind, sidecar, **FAST)
    with app_span():
        assert client.send(_event("explicit", **own))
    assert await client.flush()
    await client.close()
    assert receiver.wait_for_spans(1)
    [received] = receiver.spans()
    assert (received.trace_id.hex(), received.parent_span_id.hex()) == (own["trace_id"], own["span_id"])


@pytest.mark.parametrize("kind", KINDS)
async def test_trace_headers_are_sent_only_for_a_current_span(kind: str, recorder: Recorder) -> None:
    """A current span sends its exact traceparent (tracestate if any); no span or own IDs send none."""
    unsampled = SpanContext(
        int("1" * 32, 16), int("2" * 16, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT)
    )
    await _send(
        kind,
        recorder.url,
        [
            (None, _event("no-span")),
            (UPSTREAM, _event("upstream")),
            (None, _event("no-span-2")),
            (unsampled, _event("unsampled")),
            (UPSTREAM, _event("own-ids", trace_id="ab" * 16, span_id="cd" * 8)),
        ],
    )
    headers = recorder.by_event()
    assert headers["no-span"] == headers["no-span-2"] == headers["own-ids"] == {}
    assert headers["upstream"]["tracestate"] == "vendor=opaque"
    assert headers["upstream"]["traceparent"].startswith(f"00-{UPSTREAM.trace_id:032x}-")
    assert headers["upstream"]["traceparent"].endswith("-01")
    assert headers["unsampled"]["traceparent"].startswith(f"00-{'1' * 32}-")
    assert headers["unsampled"]["traceparent"].endswith("-00")
    assert "tracestate" not in headers["unsampled"]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_traceparent_is_the_app_spans_own(kind: str, recorder: Recorder) -> None:
    """The header names the app's span (its trace, its span ID, its flags), not the upstream parent."""
    client = Client(kind, recorder.url, **FAST)
    with app_span(UPSTREAM) as span:
        assert client.send(_event("in-span"))
    assert await client.flush()
    await client.close()
    assert recorder.by_event() == {
        "in-span": {"traceparent": _traceparent(span), "tracestate": "vendor=opaque"}
    }


@pytest.mark.parametrize("kind", KINDS)
async def test_events_of_different_traces_leave_in_different_requests(kind: str, recorder: Recorder) -> None:
    """Each request carries the trace headers of exactly the events it holds."""
    client = Client(kind, recorder.url, **FAST)
    expected: dict[str, dict[str, str]] = {}
    for i in range(6):
        if i % 3 == 2:
            assert client.send(_event(f"e-{i}"))
            expected[f"e-{i}"] = {}
            continue
        with app_span() as span:
            assert client.send(_event(f"e-{i}"))
        expected[f"e-{i}"] = {"traceparent": _traceparent(span)}
    assert await client.flush()
    await client.close()
    assert recorder.by_event() == expected
    assert len(recorder.requests) >= 5  # four traces plus at least one request without a context


async def test_without_opentelemetry_the_client_sends_no_trace_headers(recorder: Recorder) -> None:
    """With opentelemetry unimportable, the client imports, sends, and sends no trace header."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import otel_service.client as client\n"
        "assert client._otel_trace is None\n"
        "c = client.EventClient(sys.argv[1], flush_interval=0.02)\n"
        "assert c.send({'kind': 'llm_call', 'model': 'm', 'duration_ms': 5, 'correlation_id': 'no-otel'})\n"
        "c.close(5.0)\n"
        "print(c.sent, dict(c.dropped))\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        recorder.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "1 {}"
    assert recorder.by_event() == {"no-otel": {}}
