"""Sends OTLP export requests over gRPC or HTTP/protobuf and classifies the answer.

Never raises: every outcome, including connection errors, comes back as a ``SendResult``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import grpc
import requests
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = ["GrpcSender", "HttpSender", "SendResult", "Sender", "create_sender"]

_RETRYABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
}
_RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
#: gRPC outcomes after which the receiver may have taken the request all the same.
_MAYBE_DELIVERED_GRPC = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class SendResult:
    """``ok``: delivered (``rejected`` items refused by the receiver as a partial success).
    ``retry``: try again, after ``retry_after`` seconds if the receiver said so. ``maybe_delivered``:
    the request may have reached the receiver although no answer came (a timeout after sending): a
    retry may then deliver it twice."""

    ok: bool
    retry: bool = False
    retry_after: float | None = None
    rejected: int = 0
    error: str = ""
    maybe_delivered: bool = False


class Sender(Protocol):
    def send(self, signal: str, payload: bytes) -> SendResult: ...

    def close(self) -> None: ...


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class HttpSender:
    """OTLP/HTTP with binary protobuf (``/v1/traces``, ``/v1/logs``)."""

    _responses: Mapping[str, Any] = {
        "traces": trace_service_pb2.ExportTraceServiceResponse,
        "logs": logs_service_pb2.ExportLogsServiceResponse,
    }

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout: float) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": "application/x-protobuf", **headers})

    def send(self, signal: str, payload: bytes) -> SendResult:
        try:
            response = self._session.post(
                f"{self._endpoint}/v1/{signal}", data=payload, timeout=self._timeout
            )
        except requests.RequestException as exc:
            # Refused or unreachable before sending: not delivered; anything else (a read timeout, a
            # connection dropped while waiting for the answer) may have been.
            sent = not isinstance(exc, requests.ConnectionError) or "Connection aborted" in str(exc)
            return SendResult(False, retry=True, error=f"{type(exc).__name__}: {exc}", maybe_delivered=sent)
        if response.ok:
            rejected = 0
            if response.content:
                try:
                    answer = self._responses[signal].FromString(response.content)
                    rejected = _rejected(answer)
                except Exception:
                    rejected = 0
            return SendResult(True, rejected=rejected)
        retry = response.status_code in _RETRYABLE_HTTP
        return SendResult(
            False,
            retry=retry,
            retry_after=_retry_after(response.headers.get("Retry-After")) if retry else None,
            error=f"HTTP {response.status_code}",
        )

    def close(self) -> None:
        self._session.close()


def _rejected(answer: Any) -> int:
    if not answer.HasField("partial_success"):
        return 0
    partial = answer.partial_success
    return int(getattr(partial, "rejected_spans", 0) or getattr(partial, "rejected_log_records", 0))


class GrpcSender:
    """OTLP/gRPC (``TraceService/Export``, ``LogsService/Export``)."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout: float) -> None:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        target = parsed.netloc or parsed.path
        if parsed.scheme == "https":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(target)
        self._metadata = tuple((key.lower(), value) for key, value in headers.items())
        self._timeout = timeout
        # The payload is already serialized: send its bytes as they are.
        self._calls = {
            signal: self._channel.unary_unary(
                f"/opentelemetry.proto.collector.{name}.v1.{service}/Export",
                request_serializer=bytes,
                response_deserializer=response.FromString,
            )
            for signal, name, service, response in (
                ("traces", "trace", "TraceService", trace_service_pb2.ExportTraceServiceResponse),
                ("logs", "logs", "LogsService", logs_service_pb2.ExportLogsServiceResponse),
            )
        }

    def send(self, signal: str, payload: bytes) -> SendResult:
        try:
            answer = self._calls[signal](payload, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            retry = code in _RETRYABLE_GRPC
            maybe = code in _MAYBE_DELIVERED_GRPC
            return SendResult(False, retry=retry, error=f"gRPC {code.name}", maybe_delivered=maybe)
        return SendResult(True, rejected=_rejected(answer))

    def close(self) -> None:
        self._channel.close()


def create_sender(endpoint: str, protocol: str, headers: Mapping[str, str], timeout: float) -> Sender:
    if protocol == "grpc":
        return GrpcSender(endpoint, headers, timeout)
    return HttpSender(endpoint, headers, timeout)
