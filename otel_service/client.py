"""A fire-and-forget client for apps: ``EventClient`` (threads) and ``AsyncEventClient`` (asyncio).

Events go into a bounded queue and are posted in batches to ``/v1/events`` by a background worker. No
method raises into the app or blocks it beyond a queue insert; everything dropped is counted in
``dropped`` by reason: ``queue_full``, ``closed``, ``rejected`` (the sidecar refused the item),
``send_failed`` (unreachable or still refusing after retries), ``unserializable`` (not JSON). With
``opentelemetry-api`` importable, events go with the ``traceparent`` (and ``tracestate``) of the span
current at ``send``, unless they name their own ``trace_id``/``span_id``; one request per trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import aiohttp

try:
    from opentelemetry import trace as _otel_trace
except ImportError:  # no OpenTelemetry in the app: events carry no trace context
    _otel_trace = None  # type: ignore[assignment]

__all__ = ["AsyncEventClient", "EventClient"]

_RETRY_STATUS = frozenset({429, 502, 503, 504})
_Trace = tuple[tuple[str, str], ...]  # an event's trace headers: traceparent (and tracestate), or none


def _trace_headers(event: Mapping[str, Any]) -> _Trace:
    """The current span's W3C headers (as the intake parses them), unless the event names its parent."""
    span = _otel_trace.get_current_span().get_span_context() if _otel_trace else None
    if span is None or not span.is_valid or event.get("trace_id") or event.get("span_id"):
        return ()
    parent = ("traceparent", f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}")
    state = span.trace_state.to_header()
    return (parent, ("tracestate", state)) if state else (parent,)


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(30.0, max(0.0, float(value))) if value else default
    except ValueError:
        return default


def _encode(event: Mapping[str, Any], accounting: _Accounting) -> bytes | None:
    """The event as JSON now, in the caller's thread, so one bad event cannot sink a batch."""
    try:
        return json.dumps(event, allow_nan=False).encode()
    except (TypeError, ValueError):
        accounting.dropped["unserializable"] += 1
        return None


class _Accounting:
    def __init__(self) -> None:
        self.sent = 0
        self.dropped: Counter[str] = Counter()

    def settle(self, status: int, body: bytes, count: int) -> None:
        """Account for a final answer of the sidecar to a batch of ``count`` events."""
        if status == 202:
            try:
                answer = json.loads(body)
                rejected = int(answer.get("rejected", 0))
            except (ValueError, AttributeError, TypeError):
                rejected = 0
            self.sent += count - rejected
            if rejected:
                self.dropped["rejected"] += rejected
        elif 400 <= status < 500 and status not in _RETRY_STATUS:
            self.dropped["rejected"] += count
        else:
            self.dropped["send_failed"] += count


class _Client:
    """What both clients share: the bounded queue of encoded events and the accounting."""

    _queue: queue.Queue[tuple[_Trace, bytes]] | asyncio.Queue[tuple[_Trace, bytes]]
    _full: tuple[type[Exception], ...] = (queue.Full, asyncio.QueueFull)

    def __init__(
        self, *, token: str | None, batch_size: int, flush_interval: float, max_retries: int
    ) -> None:
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_retries = max_retries
        self._accounting = _Accounting()
        self._closed = False

    @property
    def sent(self) -> int:
        return self._accounting.sent

    @property
    def dropped(self) -> Counter[str]:
        return self._accounting.dropped

    def send(self, event: Mapping[str, Any]) -> bool:
        """Queue one event without waiting; ``False`` (and counted) if it had to be dropped."""
        if self._closed:
            self._accounting.dropped["closed"] += 1
            return False
        encoded = _encode(event, self._accounting)
        if encoded is None:
            return False
        try:
            self._queue.put_nowait((_trace_headers(event), encoded))
        except self._full:
            self._accounting.dropped["queue_full"] += 1
            return False
        return True

    def _requests(self, batch: list[tuple[_Trace, bytes]]) -> list[tuple[list[bytes], dict[str, str]]]:
        """A batch as requests (events, headers): one per trace context, in order."""
        groups: dict[_Trace, list[bytes]] = {}
        for trace, encoded in batch:
            groups.setdefault(trace, []).append(encoded)
        return [(events, {**self._headers, **dict(trace)}) for trace, events in groups.items()]


class EventClient(_Client):
    """Thread-based client; safe to call from any thread."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:5001",
        *,
        token: str | None = None,
        timeout: float = 5.0,
        max_queue: int = 10_000,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        max_retries: int = 3,
    ) -> None:
        parsed = urlparse(url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._https = parsed.scheme == "https"
        self._path = (parsed.path.rstrip("/") or "") + "/v1/events"
        self._timeout = timeout
        super().__init__(
            token=token, batch_size=batch_size, flush_interval=flush_interval, max_retries=max_retries
        )
        self._queue: queue.Queue[tuple[_Trace, bytes]] = queue.Queue(maxsize=max_queue)
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="otel-service-client", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was sent (or dropped)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop; later events count as ``closed``."""
        self.flush(timeout)
        self._closed = True
        self._thread.join(timeout=1.0)
        self._disconnect()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not (self._closed and self._queue.empty()):
            try:
                batch = [self._queue.get(timeout=self._interval)]
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while len(batch) < self._batch_size:
                    batch.append(self._queue.get_nowait())
            for events, headers in self._requests(batch):
                try:
                    self._post(events, headers)
                except Exception:  # never let the app's telemetry thread die
                    self._accounting.dropped["send_failed"] += len(events)
                finally:
                    for _ in events:
                        self._queue.task_done()

    def _post(self, batch: list[bytes], headers: dict[str, str]) -> None:
        body = b"[" + b",".join(batch) + b"]"
        delay = 0.1
        for attempt in range(self._max_retries + 1):
            try:
                status, answer, retry_after = self._request(body, headers)
            except (OSError, http.client.HTTPException):
                self._disconnect()
                status, answer, retry_after = 0, b"", None
            if status not in _RETRY_STATUS and status != 0:
                self._accounting.settle(status, answer, len(batch))
                return
            if attempt < self._max_retries and not self._closed:
                time.sleep(_retry_after(retry_after, delay))
                delay *= 2
        self._accounting.dropped["send_failed"] += len(batch)

    def _request(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        self._conn.request("POST", self._path, body=body, headers=headers)
        response = self._conn.getresponse()
        return response.status, response.read(), response.getheader("Retry-After")


class AsyncEventClient(_Client):
    """asyncio client; create it inside a running loop and ``await close()`` when done."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:5001",
        *,
        token: str | None = None,
        timeout: float = 5.0,
        max_queue: int = 10_000,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        max_retries: int = 3,
    ) -> None:
        self._url = url.rstrip("/") + "/v1/events"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        super().__init__(
            token=token, batch_size=batch_size, flush_interval=flush_interval, max_retries=max_retries
        )
        self._queue: asyncio.Queue[tuple[_Trace, bytes]] = asyncio.Queue(maxsize=max_queue)
        self._session: aiohttp.ClientSession | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        await self.flush(timeout)
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for events, headers in self._requests(batch):
                try:
                    await self._post(events, headers)
                except Exception:  # never let the app's telemetry task die
                    self._accounting.dropped["send_failed"] += len(events)
                finally:
                    for _ in events:
                        self._queue.task_done()

    async def _post(self, batch: list[bytes], headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = b"[" + b",".join(batch) + b"]"
        delay = 0.1
        for attempt in range(self._max_retries + 1):
            retry_after = None
            try:
                async with self._session.post(self._url, data=body, headers=headers) as resp:
                    status, answer = resp.status, await resp.read()
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                status, answer = 0, b""
            if status not in _RETRY_STATUS and status != 0:
                self._accounting.settle(status, answer, len(batch))
                return
            if attempt < self._max_retries:
                await asyncio.sleep(_retry_after(retry_after, delay))
                delay *= 2
        self._accounting.dropped["send_failed"] += len(batch)
