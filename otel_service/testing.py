"""Test doubles that ship with the package: a real in-process OTLP receiver (gRPC and HTTP).

    with OtlpReceiver() as receiver:
        ...  # point OTEL_EXPORTER_OTLP_ENDPOINT at receiver.grpc_endpoint or receiver.http_endpoint
        receiver.wait_for_spans(10)
        spans = receiver.spans()

Failures can be injected (``receiver.fail(...)``) to exercise retries and backpressure.
``mutated_bodies`` makes reproducible malformed request bodies for fuzzing an intake endpoint.

Length: the receiver (both transports, failure injection, waiting helpers) and the fuzz-body maker
are the two doubles a test of the sidecar needs; each is one piece.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["Failure", "OtlpReceiver", "mutated_bodies"]

_REQUESTS: dict[str, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}
_RESPONSES: dict[str, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
}


@dataclass
class Failure:
    """Answer the next ``count`` requests of ``signal`` (or all signals) with an error."""

    count: int
    http_status: int = 503
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    retry_after: float | None = None
    delay: float = 0.0
    signal: str | None = None


class OtlpReceiver:
    """Collects every OTLP export request it is sent, over gRPC and HTTP/protobuf."""

    def __init__(self, host: str = "127.0.0.1", *, grpc_port: int = 0, http_port: int = 0) -> None:
        self._host = host
        self._lock = threading.Condition()
        self.requests: dict[str, list[Any]] = {"traces": [], "logs": [], "metrics": []}
        self._failures: list[Failure] = []
        self.refused: dict[str, int] = {"traces": 0, "logs": 0, "metrics": 0}
        #: Items received so far (spans, log records, metrics), kept as they arrive.
        self.counts: dict[str, int] = {"traces": 0, "logs": 0, "metrics": 0}
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_port = grpc_port
        self.http_port = http_port

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self, "traces"), server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Servicer(self, "logs"), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self, "metrics"), server
        )
        self.grpc_port = server.add_insecure_port(f"{self._host}:{self.grpc_port}")
        server.start()
        self._grpc = server
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                signal = self.path.rstrip("/").rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if signal not in _REQUESTS:
                    self.send_response(404)
                    self.end_headers()
                    return
                failure = receiver._take_failure(signal)
                if failure is not None:
                    time.sleep(failure.delay)
                    self.send_response(failure.http_status)
                    if failure.retry_after is not None:
                        self.send_header("Retry-After", str(failure.retry_after))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver._store(signal, _REQUESTS[signal].FromString(body))
                answer = _RESPONSES[signal]().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._http = ThreadingHTTPServer((self._host, self.http_port), Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self._host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    # -- failure injection ---------------------------------------------------------------------

    def fail(self, failure: Failure) -> None:
        with self._lock:
            self._failures.append(failure)

    def heal(self) -> None:
        """Forget every pending injected failure."""
        with self._lock:
            self._failures.clear()

    #: Seconds every accepted request waits before it is answered (a slow collector).
    delay = 0.0

    def _take_failure(self, signal: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.count > 0 and failure.signal in (None, signal):
                    failure.count -= 1
                    self.refused[signal] += 1
                    return failure
        return None

    def _store(self, signal: str, request: Any) -> None:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.requests[signal].append(request)
            self.counts[signal] += _items(signal, request)
            self._lock.notify_all()

    # -- reading what arrived ------------------------------------------------------------------

    def spans(self) -> list[Span]:
        with self._lock:
            return [
                span
                for request in self.requests["traces"]
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

    def logs(self) -> list[LogRecord]:
        with self._lock:
            return [
                record
                for request in self.requests["logs"]
                for resource_logs in request.resource_logs
                for scope_logs in resource_logs.scope_logs
                for record in scope_logs.log_records
            ]

    def _metric_points(self, names: tuple[str, ...]) -> Iterator[tuple[str, Any, Any]]:
        """(``service.instance.id``, metric, data point) of every point of the metrics ``names``."""
        with self._lock:
            requests = list(self.requests["metrics"])
        for request in requests:
            for resource_metrics in request.resource_metrics:
                instance = next(
                    (kv.value.string_value for kv in resource_metrics.resource.attributes
                     if kv.key == "service.instance.id"),
                    "",
                )  # fmt: skip
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        if metric.name in names and kind is not None:
                            for point in getattr(metric, kind).data_points:
                                yield instance, metric, point

    def metric_identities(self, *names: str) -> set[tuple[str, int]]:
        """Every (``service.instance.id``, series start time) that sent a point of the metrics
        ``names``: one per continuous series."""
        return {
            (instance, point.start_time_unix_nano)
            for instance, metric, point in self._metric_points(names)
            if metric.HasField("sum") or metric.HasField("histogram")
        }

    def metric_total(self, name: str) -> float:
        """The total of a cumulative metric across sidecar restarts: for each instance
        (``service.instance.id``), the sum over attribute sets of its last exported value
        (data point ``count`` for histograms, ``as_double``/``as_int`` for sums)."""
        last: dict[tuple[str, tuple[Any, ...]], float] = {}
        for instance, metric, point in self._metric_points((name,)):
            key = (instance, tuple(sorted((kv.key, str(kv.value)) for kv in point.attributes)))
            if metric.HasField("histogram"):
                last[key] = float(point.count)
            elif metric.HasField("sum"):
                last[key] = point.as_double or float(point.as_int)
        return sum(last.values())

    def metrics(self) -> list[Metric]:
        """Every metric of every export request, in arrival order."""
        with self._lock:
            return [
                metric
                for request in self.requests["metrics"]
                for resource_metrics in request.resource_metrics
                for scope_metrics in resource_metrics.scope_metrics
                for metric in scope_metrics.metrics
            ]

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> bool:
        return self._wait(lambda: self.counts["traces"] >= count, timeout)

    def wait_for_logs(self, count: int, timeout: float = 10.0) -> bool:
        return self._wait(lambda: self.counts["logs"] >= count, timeout)

    def wait_for_metrics(self, timeout: float = 10.0) -> bool:
        return self._wait(lambda: bool(self.requests["metrics"]), timeout)


def _items(signal: str, request: Any) -> int:
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    return sum(len(sm.metrics) for rm in request.resource_metrics for sm in rm.scope_metrics)


class _Servicer:
    def __init__(self, receiver: OtlpReceiver, signal: str) -> None:
        self._receiver = receiver
        self._signal = signal

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        failure = self._receiver._take_failure(self._signal)
        if failure is not None:
            time.sleep(failure.delay)
            context.abort(failure.grpc_code, "injected failure")
        self._receiver._store(self._signal, request)
        return _RESPONSES[self._signal]()


#: Values a mutation puts in place of another: wrong types, bounds, encodings, nesting.
_ODD_VALUES: list[Any] = [None, True, -1, 2**63, 2**64, 1e309, -0.0, "", "\x00", "\ud800", "x" * 5000,
                          [], {}, [[[[[]]]]], {"a": {"b": {"c": {}}}}, "1" * 5000, "NaN",
                          "2026-13-45T99:99:99Z"]  # fmt: skip


def _mutate(value: Any, rng: random.Random) -> Any:
    """``value`` with one field, item or type changed."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        copy = dict(value)
        choice = rng.random()
        if choice < 0.2:
            del copy[key]
        elif choice < 0.3:
            copy[key + "_unknown"] = copy[key]
        else:
            copy[key] = _mutate(copy[key], rng)
        return copy
    if isinstance(value, list) and value and rng.random() < 0.8:
        copy_list = list(value)
        index = rng.randrange(len(copy_list))
        copy_list[index] = _mutate(copy_list[index], rng)
        return copy_list
    return rng.choice(_ODD_VALUES)


def mutated_bodies(seed_document: Any, count: int, *, seed: str = "fuzz") -> Iterator[bytes]:
    """``count`` request bodies made from ``seed_document``, the same for the same ``seed``: one field,
    item or type changed (dropped, unknown, odd values), and some also damaged as bytes (truncated, a
    byte flipped, invalid UTF-8, a duplicate key in front)."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible cases, not secrets
    for _ in range(count):
        raw = json.dumps(_mutate(seed_document, rng), allow_nan=True).encode("utf-8", "surrogatepass")
        damage = rng.random()
        if damage < 0.1 and raw:
            raw = raw[: rng.randrange(len(raw))]
        elif damage < 0.2 and raw:
            index = rng.randrange(len(raw))
            raw = raw[:index] + bytes([rng.randrange(256)]) + raw[index + 1 :]
        elif damage < 0.25:
            raw = raw.replace(b'"', b'"\xff', 1)
        elif damage < 0.3:
            raw = b'{"a":{"x":1,"x":2},' + raw
        yield raw
