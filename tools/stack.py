"""The whole otel-service pipeline, natively on loopback, with the repository's own configuration files.

``Stack`` starts VictoriaLogs (logs), Jaeger v2 (traces), Prometheus, Alertmanager, the OpenTelemetry
Collector and the sidecar (``python -m otel_service serve``) as child processes on free 127.0.0.1
ports: the Apache-2.0 stack of docker-compose.apache.yml, each with the file compose mounts:

- collector/config.yaml and jaeger/config.yaml as they are: every address, port and path in them is
  an environment variable, which the stack sets (the collector's two store endpoints included);
- victorialogs/victorialogs.env as VictoriaLogs' flags (``-envflag.enable``), plus the listen
  address and data path on the command line;
- prometheus/prometheus.yml and prometheus/scrape/jaeger-victorialogs.yml (mounted as
  scrape/backends.yml) copied into a temp dir with only their ``host:port`` strings replaced
  (docker service names become 127.0.0.1 and the stack's ports), prometheus/rules/ copied next to
  them and the sidecar's bearer token written to ``secrets/otelsvc_auth_token``;
- alertmanager/alertmanager.yml copied with the webhook base URL
  ``http://otel-service-alert-webhook:9099`` replaced by an in-process recorder's URL.

Nothing else in those files changes (intervals included). Binaries come from the environment:
``OTELCOL_BIN JAEGER_BIN VICTORIALOGS_BIN PROMETHEUS_BIN ALERTMANAGER_BIN`` (``make backends`` writes
them to tools/backends.env). A missing binary, a component that exits or is not ready in time raises
``StackError`` naming the component, with the end of its log.

Loki, Tempo and Grafana (AGPL-3.0) are never built or run here: they are the default compose stack,
and only docker-compose.yml runs their official images.

Run the stack by hand (``make stack``, or ``python -m tools.stack --help``): it uses the standard
ports where they are free, adds Grafana when a ``grafana-server`` binary exists, prints the URLs and
waits for Ctrl-C. The end-to-end suite imports ``Stack`` from here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import calendar
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml

__all__ = [
    "REPO",
    "Component",
    "HttpResponse",
    "LogLine",
    "Span",
    "Stack",
    "StackError",
    "WebhookRecorder",
    "http_request",
]

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WEBHOOK_BASE = "http://otel-service-alert-webhook:9099"
SERVICE_NAME = "otel-service"

#: Environment variable -> (component, what it is).
BINARIES = {
    "OTELCOL_BIN": "collector",
    "JAEGER_BIN": "jaeger",
    "VICTORIALOGS_BIN": "victorialogs",
    "PROMETHEUS_BIN": "prometheus",
    "ALERTMANAGER_BIN": "alertmanager",
}

#: The ports docker-compose.apache.yml and the configuration files use (``python -m tools.stack``
#: takes these when they are free). Jaeger's OTLP receivers, health check and own metrics default
#: to 4317/4318/13133/8888 too, which the collector owns on one host: they get free ports.
STANDARD_PORTS = {
    "sidecar": 5001,
    "prometheus": 9090,
    "alertmanager": 9093,
    "victorialogs": 9428,
    "jaeger_query_http": 16686,
    "jaeger_query_grpc": 16685,
    "jaeger_otlp_grpc": None,
    "jaeger_otlp_http": None,
    "jaeger_health": None,
    "jaeger_health_grpc": None,
    "jaeger_metrics": None,
    "otelcol_grpc": 4317,
    "otelcol_http": 4318,
    "otelcol_prometheus": 8889,
    "otelcol_health": 13133,
    "otelcol_telemetry": 8888,
    "otelcol_pprof": 1777,
    "webhook": 9099,
    "grafana": 3000,
}

#: Prometheus scrape/alerting targets in prometheus.yml -> the port name that replaces them.
PROMETHEUS_TARGETS = {
    "otel-collector:8889": "otelcol_prometheus",
    "otel-collector:8888": "otelcol_telemetry",
    "otel-service:5001": "sidecar",
    "localhost:9090": "prometheus",
    "alertmanager:9093": "alertmanager",
}

#: Targets of the backend scrape jobs (prometheus/scrape/jaeger-victorialogs.yml) -> port name.
BACKEND_SCRAPE_FILE = "jaeger-victorialogs.yml"
BACKEND_TARGETS = {
    "jaeger:8888": "jaeger_metrics",
    "victorialogs:9428": "victorialogs",
}


#: VictoriaLogs reads its flags from ``VL_*`` environment variables (``-envflag.enable``); the values
#: are in victorialogs/victorialogs.env, the file docker-compose.apache.yml uses as env_file.
VICTORIALOGS_ENV_PREFIX = "VL_"
VICTORIALOGS_ENV_FILE = REPO / "victorialogs" / "victorialogs.env"


def victorialogs_flags(path: Path = VICTORIALOGS_ENV_FILE) -> dict[str, str]:
    """``NAME=value`` lines of victorialogs/victorialogs.env (comments and blank lines skipped)."""
    flags: dict[str, str] = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.startswith(VICTORIALOGS_ENV_PREFIX):
            raise StackError(f"victorialogs: {path}:{number}: expected {VICTORIALOGS_ENV_PREFIX}<flag>=<v>")
        flags[name] = value
    return flags


class StackError(RuntimeError):
    """A component is missing, did not start, died, or did not answer in time."""


# ------------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP request on its own connection (closed before returning). Raises ``OSError`` when the
    server cannot be reached."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port or 80, timeout=timeout)
    try:
        connection.request(method, target, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        return HttpResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def _get_json(url: str, what: str, timeout: float = 10.0) -> Any:
    try:
        response = http_request("GET", url, timeout=timeout)
    except OSError as exc:
        raise StackError(f"{what}: cannot reach {url}: {exc}") from exc
    if response.status != 200:
        raise StackError(f"{what}: HTTP {response.status} from {url}: {response.body[:1000]!r}")
    return response.json()


# ---------------------------------------------------------------------------------------- helpers


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _any_free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def allocate_ports(standard: bool) -> dict[str, int]:
    """A distinct free loopback port per name; the standard one where asked for and free."""
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name, preferred in STANDARD_PORTS.items():
        if standard and preferred is not None and preferred not in taken and _port_is_free(preferred):
            port = preferred
        else:
            port = _any_free_port(taken)
        ports[name] = port
        taken.add(port)
    return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _decode_id(value: str | None) -> str | None:
    """A trace/span ID from OTLP/JSON (hex; base64 in some encoders) as lower-case hex."""
    if not value:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}", value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _any_value(value: Mapping[str, Any]) -> Any:
    """The Python value of an OTLP/JSON AnyValue."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {kv["key"]: _any_value(kv.get("value", {})) for kv in value["kvlistValue"].get("values", [])}
    return None


# --------------------------------------------------------------------------------- query results


@dataclass(frozen=True)
class Span:
    """One span of a trace as the trace store (Jaeger's OTLP ``/api/v3`` answer) returns it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status_code: str
    resource: Mapping[str, Any]
    #: What the trace store changed on ingestion and said so (Jaeger's ``@jaeger@warnings``).
    store_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogLine:
    """One VictoriaLogs entry: its fields (stream fields and the rest: ``trace_id``, ``span_id``,
    ``correlation_id``, ...) without ``_msg`` and ``_time``, its time, and its message (the body)."""

    labels: Mapping[str, str]
    time_ns: int
    line: str

    def json(self) -> Any:
        return json.loads(self.line)


def parse_otlp_trace(document: Mapping[str, Any]) -> list[Span]:
    """Spans of an OTLP/JSON trace: Jaeger's ``/api/v3/traces/<id>`` answer (``result.resourceSpans``),
    or a bare ``resourceSpans`` document."""
    resources = document.get("result", document).get("resourceSpans") or []
    spans: list[Span] = []
    for resource_spans in resources:
        resource = {
            kv["key"]: _any_value(kv.get("value", {}))
            for kv in resource_spans.get("resource", {}).get("attributes", [])
        }
        scopes = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or []
        for scope in scopes:
            for raw in scope.get("spans", []):
                attributes = {kv["key"]: _any_value(kv.get("value", {})) for kv in raw.get("attributes", [])}
                warnings = tuple(attributes.pop(JAEGER_WARNINGS, None) or ())
                end_ns = int(raw.get("endTimeUnixNano", 0))
                spans.append(
                    Span(
                        trace_id=_decode_id(raw.get("traceId")) or "",
                        span_id=_decode_id(raw.get("spanId")) or "",
                        parent_span_id=_decode_id(raw.get("parentSpanId")),
                        name=raw.get("name", ""),
                        kind=_enum_name(raw.get("kind", ""), SPAN_KINDS),
                        start_ns=int(raw.get("startTimeUnixNano", 0)),
                        end_ns=_original_end_ns(warnings, end_ns),
                        attributes=attributes,
                        status_code=_enum_name(raw.get("status", {}).get("code", 0), STATUS_CODES),
                        resource=resource,
                        store_warnings=warnings,
                    )
                )
    return spans


#: The span attribute where Jaeger records what it changed on ingestion (jptrace.WarningsAttribute).
JAEGER_WARNINGS = "@jaeger@warnings"
#: Jaeger's negative-duration sanitizer gives a span that ends when it starts (a zero duration, such as
#: a feedback event's) an end 1 ns later, and keeps the original end in a warning:
#: "... Original end timestamp: 2026-12-07 18:28:53.243931904 +0000 UTC, adjusted to: ...".
_JAEGER_ORIGINAL_END = re.compile(
    r"Original end timestamp: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))? ([+-])(\d\d)(\d\d) "
)


def _original_end_ns(warnings: tuple[str, ...], end_ns: int) -> int:
    """The end the span was sent with: Jaeger's recorded original where it adjusted it, else as stored."""
    for warning in warnings:
        match = _JAEGER_ORIGINAL_END.search(str(warning))
        if match:
            seconds = calendar.timegm(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
            offset = (int(match[4]) * 3600 + int(match[5]) * 60) * (1 if match[3] == "+" else -1)
            return (seconds - offset) * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))
    return end_ns


#: OTLP enum names by number (OTLP/JSON may carry either).
SPAN_KINDS = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)
STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")


def _enum_name(value: Any, names: tuple[str, ...]) -> str:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        index = int(value)
        return names[index] if 0 <= index < len(names) else str(value)
    return str(value)


def parse_vlogs_lines(body: bytes) -> list[LogLine]:
    """VictoriaLogs ``/select/logsql/query`` answer (one JSON object per line) as log lines."""
    lines: list[LogLine] = []
    for raw in body.splitlines():
        if not raw.strip():
            continue
        entry = json.loads(raw)
        fields = {k: v for k, v in entry.items() if k not in ("_msg", "_time")}
        lines.append(LogLine(fields, _rfc3339_ns(entry.get("_time", "")), entry.get("_msg", "")))
    return lines


def _rfc3339_ns(value: str) -> int:
    """``2026-12-07T18:00:00.123456789Z`` as Unix nanoseconds (0 when absent)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", value)
    if not match:
        return 0
    seconds = calendar.timegm(time.strptime(match[1], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))


def logsql_quote(value: str) -> str:
    """A LogsQL string literal (double quotes; JSON escapes are accepted)."""
    return json.dumps(value)


# ----------------------------------------------------------------------------- webhook recorder


@dataclass(frozen=True)
class WebhookCall:
    path: str
    payload: Mapping[str, Any]
    received: float


class WebhookRecorder:
    """A tiny HTTP server standing in for Alertmanager's webhook receivers: records every POST."""

    def __init__(self, port: int = 0) -> None:
        self._calls: list[WebhookCall] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = {"_raw": raw.decode("utf-8", "replace")}
                with recorder._lock:
                    recorder._calls.append(WebhookCall(self.path, payload, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="webhook", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def calls(self) -> list[WebhookCall]:
        with self._lock:
            return list(self._calls)

    def alerts(self, path: str | None = None) -> list[tuple[str, Mapping[str, Any]]]:
        """(receiver path, alert) of every alert in every notification received (or at ``path``)."""
        return [
            (call.path, alert)
            for call in self.calls()
            if path is None or call.path == path
            for alert in call.payload.get("alerts", [])
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------------------------- components


@dataclass
class Component:
    """One child process: how to start it, how to tell it is ready, how long it may take to stop."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    ready_timeout: float = 90.0
    #: Seconds between SIGTERM and SIGKILL on stop.
    stop_grace: float = 15.0
    ready_check: Callable[[HttpResponse], bool] = field(default=lambda r: r.status == 200)
    #: Where stdout goes when it is data rather than diagnostics (the sidecar's event log lines).
    stdout_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: False after a deliberate stop or kill: ``Stack.check_running`` then leaves it alone.
    wanted: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        if self.running:
            raise StackError(f"{self.name}: already running (pid {self.pid})")
        self.starts += 1
        with contextlib.ExitStack() as files:
            log = files.enter_context(self.log_path.open("ab"))
            log.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}: {self.argv}\n".encode())
            log.flush()
            out = files.enter_context(self.stdout_path.open("ab")) if self.stdout_path else log
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    cwd=REPO,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=log,
                    start_new_session=True,  # its own process group: stop/kill reaches its children
                )
            except OSError as exc:
                raise StackError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        self.wanted = True

    def error(self, why: str, lines: int = 40) -> StackError:
        return StackError(
            f"{self.name}: {why}\n----- last {lines} lines of {self.log_path} -----\n"
            f"{_tail(self.log_path, lines)}"
        )

    def wait_ready(self, timeout: float | None = None) -> float:
        """Poll the readiness URL until it answers; the seconds it took."""
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else self.ready_timeout)
        last = "no answer yet"
        while True:
            if self.process is None:
                raise StackError(f"{self.name}: not started")
            code = self.process.poll()
            if code is not None:
                raise self.error(f"exited with status {code} before it was ready ({self.ready_url})")
            try:
                response = http_request("GET", self.ready_url, timeout=2)
                if self.ready_check(response):
                    return time.monotonic() - started
                last = f"HTTP {response.status}: {response.body[:200]!r}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise self.error(
                    f"not ready after {deadline - started:.0f} s at {self.ready_url} (last answer: {last})"
                )
            time.sleep(0.2)

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; the exit status."""
        self.wanted = False
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        # Reap anything left in the group (e.g. a worker the main process did not wait for).
        self._signal(signal.SIGKILL)
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (a crash: nothing gets to flush)."""
        self.wanted = False
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self._signal(signal.SIGKILL)
        self.process.wait()
        return self.process.returncode


# ----------------------------------------------------------------------------------------- stack


class Stack:
    """Sidecar + collector + Prometheus + Alertmanager + VictoriaLogs + Jaeger on loopback (a context
    manager).

    ``metric_export_interval_ms`` and the span/log delays are the sidecar's (OTEL_* variables);
    the backends run with the repository's configuration unchanged.
    """

    def __init__(
        self,
        *,
        standard_ports: bool = False,
        workdir: Path | None = None,
        keep: bool = False,
        metric_export_interval_ms: int = 2000,
        schedule_delay_ms: int = 200,
        grafana: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.standard_ports = standard_ports
        self._workdir_arg = workdir
        self.keep = keep or bool(os.environ.get("OTEL_E2E_KEEP"))
        self.metric_export_interval_ms = metric_export_interval_ms
        self.schedule_delay_ms = schedule_delay_ms
        self.want_grafana = grafana
        self._log = log or (lambda message: None)
        self.token = os.urandom(24).hex()
        self.components: dict[str, Component] = {}
        self.ports: dict[str, int] = {}
        self.webhook: WebhookRecorder | None = None
        self.dir = Path()
        self.started_at = 0.0
        self.timings: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start everything; once more on fresh ports if another process took one of ours meanwhile
        (ports are picked free, then bound by the components a moment later)."""
        try:
            self._start()
        except StackError as exc:
            if "address already in use" not in str(exc).lower() or self.standard_ports:
                raise
            self._log(f"port taken by another process, retrying on other ports: {str(exc).splitlines()[0]}")
            self._start()

    def _start(self) -> None:
        binaries = self._binaries()
        self.components = {}
        self.timings = {}
        self.dir = self._workdir_arg or Path(tempfile.mkdtemp(prefix="otel-service-e2e-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        self.ports = allocate_ports(self.standard_ports)
        try:
            self.webhook = WebhookRecorder(self.ports["webhook"])
            self.ports["webhook"] = self.webhook.port
            self._define(binaries)
            t0 = time.monotonic()
            backends = ("victorialogs", "jaeger", "prometheus", "alertmanager")
            for name in backends:
                self.components[name].start()
            for name in backends:
                self.timings[name] = self.components[name].wait_ready()
                self._log(f"{name} ready in {self.timings[name]:.1f} s")
            for name in ("collector", "sidecar"):
                self.components[name].start()
                self.timings[name] = self.components[name].wait_ready()
                self._log(f"{name} ready in {self.timings[name]:.1f} s")
            if "grafana" in self.components:
                self.components["grafana"].start()
                self.timings["grafana"] = self.components["grafana"].wait_ready()
            self.timings["total"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop everything: sidecar first (it flushes to the collector), then the collector, then the rest."""
        if "sidecar" in self.components:
            self.components["sidecar"].stop()
        if "collector" in self.components:
            self.components["collector"].stop()
        rest = [c for name, c in self.components.items() if name not in ("sidecar", "collector")]
        for component in rest:
            if component.running:
                component._signal(signal.SIGTERM)
        for component in rest:
            component.stop()
        if self.webhook is not None:
            self.webhook.close()
            self.webhook = None
        if self.dir != Path() and not self.keep and self._workdir_arg is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _binaries() -> dict[str, str]:
        found: dict[str, str] = {}
        problems = []
        for variable, component in BINARIES.items():
            path = os.environ.get(variable, "")
            if not path:
                problems.append(f"{component}: ${variable} is not set")
            elif not os.access(path, os.X_OK):
                problems.append(f"{component}: ${variable}={path} is not an executable file")
            else:
                found[variable] = path
        if problems:
            raise StackError(
                "; ".join(problems)
                + ". Run `make backends` (tools/backends.sh install) and `. tools/backends.env`, "
                'or eval "$(tools/backends.sh paths)".'
            )
        return found

    def _base_env(self) -> dict[str, str]:
        """This process's environment without OpenTelemetry/otel-service settings."""
        return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELSVC_", "OTELCOL_"))}

    def _define(self, binaries: Mapping[str, str]) -> None:
        p = self.ports
        d = self.dir
        env = self._base_env()
        logs = d / "logs"
        logs.mkdir(exist_ok=True)

        self.components["victorialogs"] = Component(
            "victorialogs",
            [
                binaries["VICTORIALOGS_BIN"],
                "-envflag.enable",
                f"-envflag.prefix={VICTORIALOGS_ENV_PREFIX}",
                f"-httpListenAddr={HOST}:{p['victorialogs']}",
                f"-storageDataPath={d / 'victorialogs-data'}",
            ],
            {**env, **victorialogs_flags()},
            logs / "victorialogs.log",
            f"{self.victorialogs_url}/health",
            stop_grace=15,
        )
        jaeger_env = {
            **env,
            "JAEGER_BIND_HOST": HOST,
            "JAEGER_OTLP_GRPC_PORT": str(p["jaeger_otlp_grpc"]),
            "JAEGER_OTLP_HTTP_PORT": str(p["jaeger_otlp_http"]),
            "JAEGER_QUERY_HTTP_PORT": str(p["jaeger_query_http"]),
            "JAEGER_QUERY_GRPC_PORT": str(p["jaeger_query_grpc"]),
            "JAEGER_HEALTH_PORT": str(p["jaeger_health"]),
            "JAEGER_HEALTH_GRPC_PORT": str(p["jaeger_health_grpc"]),
            "JAEGER_METRICS_PORT": str(p["jaeger_metrics"]),
            "JAEGER_DATA_DIR": str(d / "jaeger-data"),
            "JAEGER_LOG_LEVEL": "info",
        }
        self.components["jaeger"] = Component(
            "jaeger",
            [binaries["JAEGER_BIN"], f"--config={REPO / 'jaeger' / 'config.yaml'}"],
            jaeger_env,
            logs / "jaeger.log",
            f"http://{HOST}:{p['jaeger_health']}/status",
            stop_grace=15,
        )
        prom_dir = self._write_prometheus_config()
        self.components["prometheus"] = Component(
            "prometheus",
            [
                binaries["PROMETHEUS_BIN"],
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={d / 'prometheus-data'}",
                f"--web.listen-address={HOST}:{p['prometheus']}",
                "--enable-feature=exemplar-storage",
                "--web.enable-remote-write-receiver",
            ],
            dict(env),
            logs / "prometheus.log",
            f"{self.prometheus_url}/-/ready",
            stop_grace=15,
        )
        am_config = self._write_alertmanager_config()
        self.components["alertmanager"] = Component(
            "alertmanager",
            [
                binaries["ALERTMANAGER_BIN"],
                f"--config.file={am_config}",
                f"--storage.path={d / 'alertmanager-data'}",
                f"--web.listen-address={HOST}:{p['alertmanager']}",
                "--cluster.listen-address=",
            ],
            dict(env),
            logs / "alertmanager.log",
            f"{self.alertmanager_url}/-/ready",
            stop_grace=10,
        )
        collector_env = {
            **env,
            "OTELCOL_BIND_HOST": HOST,
            "OTELCOL_OTLP_GRPC_PORT": str(p["otelcol_grpc"]),
            "OTELCOL_OTLP_HTTP_PORT": str(p["otelcol_http"]),
            "OTELCOL_PROMETHEUS_PORT": str(p["otelcol_prometheus"]),
            "OTELCOL_HEALTH_PORT": str(p["otelcol_health"]),
            "OTELCOL_TELEMETRY_PORT": str(p["otelcol_telemetry"]),
            "OTELCOL_PPROF_ENDPOINT": f"{HOST}:{p['otelcol_pprof']}",
            "OTELCOL_STORAGE_DIR": str(d / "otelcol-storage"),
            "TRACES_OTLP_ENDPOINT": f"{HOST}:{p['jaeger_otlp_grpc']}",
            "LOGS_OTLP_ENDPOINT": f"{self.victorialogs_url}/insert/opentelemetry",
        }
        self.components["collector"] = Component(
            "collector",
            [binaries["OTELCOL_BIN"], f"--config={REPO / 'collector' / 'config.yaml'}"],
            collector_env,
            logs / "collector.log",
            f"http://{HOST}:{p['otelcol_health']}/",
            stop_grace=15,
        )
        sidecar_env = {
            **env,
            "OTELSVC_HOST": HOST,
            "OTELSVC_PORT": str(p["sidecar"]),
            "OTELSVC_AUTH_TOKEN": self.token,
            "OTELSVC_SPOOL_DIR": str(d / "sidecar-spool"),
            "OTEL_SERVICE_NAME": SERVICE_NAME,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{p['otelcol_grpc']}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": str(self.metric_export_interval_ms),
            "OTEL_BSP_SCHEDULE_DELAY": str(self.schedule_delay_ms),
            "OTEL_BLRP_SCHEDULE_DELAY": str(self.schedule_delay_ms),
            "PYTHONUNBUFFERED": "1",
        }
        self.components["sidecar"] = Component(
            "sidecar",
            [sys.executable, "-m", "otel_service", "serve", "--port", str(p["sidecar"])],
            sidecar_env,
            logs / "sidecar.log",
            f"{self.sidecar_url}/ready",
            ready_timeout=60,
            stop_grace=20,
            stdout_path=logs / "sidecar-events.jsonl",
        )
        if self.want_grafana:
            grafana = self._grafana_component(env, logs)
            if grafana is not None:
                self.components["grafana"] = grafana

    def _write_prometheus_config(self) -> Path:
        """prometheus.yml and the backend scrape jobs with only their ``host:port`` targets rewritten;
        rules and token beside them."""
        out = self.dir / "prometheus"
        out.mkdir(exist_ok=True)
        for source_path, target_path, targets in (
            (REPO / "prometheus" / "prometheus.yml", out / "prometheus.yml", PROMETHEUS_TARGETS),
            (
                REPO / "prometheus" / "scrape" / BACKEND_SCRAPE_FILE,
                out / "scrape" / "backends.yml",
                BACKEND_TARGETS,
            ),
        ):
            source = source_path.read_text("utf-8")
            found = set(re.findall(r"""["']([A-Za-z0-9_.-]+:\d+)["']""", source))
            unknown = found - targets.keys()
            missing = targets.keys() - found
            if unknown or missing:
                raise StackError(
                    f"prometheus: {source_path.relative_to(REPO)} targets changed: "
                    f"unknown {sorted(unknown)}, "
                    f"no longer present {sorted(missing)}; update the target maps in {__file__}"
                )
            text = source
            for target, port_name in targets.items():
                address = f"{HOST}:{self.ports[port_name]}"
                text = re.sub(rf"""(["']){re.escape(target)}(["'])""", rf"\g<1>{address}\g<2>", text)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            target_path.write_text(text, "utf-8")
        shutil.copytree(REPO / "prometheus" / "rules", out / "rules", dirs_exist_ok=True)
        secrets = out / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "otelsvc_auth_token").write_text(self.token + "\n", "utf-8")
        return out

    def _write_alertmanager_config(self) -> Path:
        source = (REPO / "alertmanager" / "alertmanager.yml").read_text("utf-8")
        if WEBHOOK_BASE not in source:
            raise StackError(f"alertmanager: alertmanager/alertmanager.yml no longer uses {WEBHOOK_BASE}")
        assert self.webhook is not None
        out = self.dir / "alertmanager"
        out.mkdir(exist_ok=True)
        path = out / "alertmanager.yml"
        path.write_text(source.replace(WEBHOOK_BASE, self.webhook.url), "utf-8")
        return path

    def _grafana_component(self, env: Mapping[str, str], logs: Path) -> Component | None:
        binary = grafana_binary()
        if binary is None:
            return None
        home = Path(os.environ.get("GRAFANA_HOME") or Path(binary).resolve().parent.parent)
        prov = self.dir / "grafana" / "provisioning"
        (prov / "datasources").mkdir(parents=True, exist_ok=True)
        (prov / "dashboards").mkdir(parents=True, exist_ok=True)
        (prov / "plugins").mkdir(parents=True, exist_ok=True)
        (prov / "alerting").mkdir(parents=True, exist_ok=True)
        # The Prometheus and Alertmanager data sources, pointed at the native ports. Loki and Tempo are
        # not part of this (Apache-2.0) stack: their data sources are left out, so the dashboards' log
        # panels stay empty; traces are in Jaeger's UI and logs in VictoriaLogs' UI.
        datasources = yaml.safe_load(
            (REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
        )
        datasources["datasources"] = [
            ds for ds in datasources["datasources"] if ds.get("type") not in ("loki", "tempo")
        ]
        text = yaml.safe_dump(datasources, sort_keys=False)
        for old, new in (
            ("http://prometheus:9090", self.prometheus_url),
            ("http://alertmanager:9093", self.alertmanager_url),
        ):
            text = text.replace(old, new)
        (prov / "datasources" / "datasources.yml").write_text(text)
        dashboards = (REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
        (prov / "dashboards" / "dashboards.yml").write_text(
            dashboards.replace("/etc/grafana/dashboards", str(REPO / "grafana" / "dashboards"))
        )
        grafana_env = {
            **env,
            "GF_PATHS_PROVISIONING": str(prov),
            "GF_PATHS_DATA": str(self.dir / "grafana" / "data"),
            "GF_PATHS_LOGS": str(self.dir / "grafana" / "logs"),
            "GF_SERVER_HTTP_ADDR": HOST,
            "GF_SERVER_HTTP_PORT": str(self.ports["grafana"]),
            "GF_SECURITY_ADMIN_USER": "admin",
            "GF_SECURITY_ADMIN_PASSWORD": os.environ.get("GRAFANA_ADMIN_PASSWORD", "admin"),
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        }
        argv = [binary] if Path(binary).name == "grafana-server" else [binary, "server"]
        return Component(
            "grafana",
            [*argv, f"--homepath={home}"],
            grafana_env,
            logs / "grafana.log",
            f"{self.grafana_url}/api/health",
            ready_timeout=120,
        )

    # -- URLs ----------------------------------------------------------------------------------

    @property
    def sidecar_url(self) -> str:
        return f"http://{HOST}:{self.ports['sidecar']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.ports['prometheus']}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.ports['alertmanager']}"

    @property
    def victorialogs_url(self) -> str:
        return f"http://{HOST}:{self.ports['victorialogs']}"

    @property
    def jaeger_url(self) -> str:
        """Jaeger's query service: UI, ``/api/v3`` (OTLP JSON) and ``/api`` (Jaeger JSON)."""
        return f"http://{HOST}:{self.ports['jaeger_query_http']}"

    @property
    def collector_metrics_url(self) -> str:
        """The collector's prometheus exporter (what Prometheus scrapes as job otel-collector)."""
        return f"http://{HOST}:{self.ports['otelcol_prometheus']}/metrics"

    @property
    def collector_otlp_grpc(self) -> str:
        return f"http://{HOST}:{self.ports['otelcol_grpc']}"

    @property
    def grafana_url(self) -> str:
        return f"http://{HOST}:{self.ports['grafana']}"

    def urls(self) -> dict[str, str]:
        out = {
            "sidecar (intake, /metrics, dashboard)": self.sidecar_url,
            "Prometheus": self.prometheus_url,
            "Alertmanager": self.alertmanager_url,
            "VictoriaLogs (UI: /select/vmui/, LogsQL: /select/logsql/query)": self.victorialogs_url,
            "Jaeger (UI, /api/v3/traces/<trace_id>)": self.jaeger_url,
            "collector OTLP/gRPC": self.collector_otlp_grpc,
            "collector OTLP/HTTP": f"http://{HOST}:{self.ports['otelcol_http']}",
            "collector prometheus exporter": self.collector_metrics_url,
            "collector health": f"http://{HOST}:{self.ports['otelcol_health']}/",
            "alert webhook recorder": self.webhook.url if self.webhook else "",
        }
        if "grafana" in self.components:
            out["Grafana"] = self.grafana_url
        return out

    # -- components ----------------------------------------------------------------------------

    def component(self, name: str) -> Component:
        return self.components[name]

    def stop(self, name: str, grace: float | None = None) -> int | None:
        """Stop one component (SIGTERM, SIGKILL after its grace period)."""
        return self.components[name].stop(grace)

    def kill(self, name: str) -> int | None:
        """kill -9 one component and its children."""
        return self.components[name].kill()

    def start_component(self, name: str, timeout: float | None = None) -> float:
        """(Re)start one component with the same ports, data and spool dirs; wait until ready."""
        component = self.components[name]
        component.start()
        return component.wait_ready(timeout)

    def restart(self, name: str) -> float:
        self.stop(name)
        return self.start_component(name)

    def check_running(self) -> None:
        """Raise naming a component that died (one stopped on purpose is not dead)."""
        dead = [c for c in self.components.values() if c.wanted and not c.running]
        if dead:
            raise dead[0].error(
                f"exited with status {dead[0].process.returncode if dead[0].process else '?'}"
            )

    def log_tail(self, name: str, lines: int = 40) -> str:
        return _tail(self.components[name].log_path, lines)

    # -- the sidecar ---------------------------------------------------------------------------

    def post(
        self,
        path: str,
        payload: Any,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """POST JSON to the sidecar with its bearer token."""
        all_headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.token}",
            **(headers or {}),
        }
        return http_request(
            "POST",
            self.sidecar_url + path,
            body=json.dumps(payload).encode(),
            headers=all_headers,
            timeout=timeout,
        )

    # -- Prometheus ----------------------------------------------------------------------------

    def _prom(self, path: str, params: Mapping[str, Any]) -> Any:
        url = f"{self.prometheus_url}/api/v1/{path}?{urlencode(params)}"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"prometheus: cannot reach {url}: {exc}") from exc
        try:
            document = response.json()
        except ValueError:
            document = {}
        if response.status != 200 or document.get("status") != "success":
            raise StackError(
                f"prometheus: {path} {dict(params)} -> HTTP {response.status}: "
                f"{document.get('errorType')}: {document.get('error') or response.body[:500]!r}"
            )
        return document["data"]

    def prom_query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector (or ``[scalar]`` for scalar results)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._prom("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def prom_value(self, expr: str) -> float | None:
        """The value of a single-series query (``None`` when it is empty)."""
        result = self.prom_query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def prom_query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self._prom(
            "query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def prom_exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: one entry per series, with its ``exemplars``."""
        result: list[dict[str, Any]] = self._prom(
            "query_exemplars", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return result

    def prom_rules(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._prom("rules", {})["groups"]
        return groups

    def prom_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._prom("targets", {})["activeTargets"]
        return targets

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus ``/api/v1/alerts``: pending and firing alerts."""
        alerts: list[dict[str, Any]] = self._prom("alerts", {})["alerts"]
        return alerts

    def am_alerts(self) -> list[dict[str, Any]]:
        """Alertmanager ``/api/v2/alerts``."""
        alerts: list[dict[str, Any]] = _get_json(f"{self.alertmanager_url}/api/v2/alerts", "alertmanager")
        return alerts

    # -- VictoriaLogs --------------------------------------------------------------------------

    def _vlogs(self, path: str, params: Mapping[str, str]) -> HttpResponse:
        url = f"{self.victorialogs_url}/select/logsql/{path}"
        body = urlencode(params).encode()
        try:
            response = http_request(
                "POST",
                url,
                body=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=30,
            )
        except OSError as exc:
            raise StackError(f"victorialogs: cannot reach {url}: {exc}") from exc
        if response.status != 200:
            raise StackError(
                f"victorialogs: {path} {dict(params)} -> HTTP {response.status}: {response.body[:500]!r}"
            )
        return response

    def logs_query(
        self, logsql: str, *, start: float | None = None, end: float | None = None, limit: int = 100_000
    ) -> list[LogLine]:
        """``/select/logsql/query`` over the run: the matching log entries, oldest first."""
        params = {
            "query": logsql,
            "start": f"{(start if start is not None else self.started_at - 86400):.3f}",
            "end": f"{(end if end is not None else time.time() + 600):.3f}",
            "limit": str(limit),
        }
        lines = parse_vlogs_lines(self._vlogs("query", params).body)
        lines.sort(key=lambda entry: entry.time_ns)
        return lines

    def logs_stats(self, logsql: str) -> list[dict[str, Any]]:
        """A ``| stats ...`` query over the run: its result rows (one JSON object each)."""
        params = {
            "query": logsql,
            "start": f"{self.started_at - 86400:.3f}",
            "end": f"{time.time() + 600:.3f}",
        }
        body = self._vlogs("query", params).body
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def logs_stream_field_names(self) -> list[str]:
        """The names of the stream fields (VictoriaLogs' index: what Loki calls labels)."""
        params = {"query": "*", "start": f"{self.started_at - 86400:.3f}", "end": f"{time.time() + 600:.3f}"}
        values: list[dict[str, Any]] = self._vlogs("stream_field_names", params).json()["values"]
        return [v["value"] for v in values]

    # -- Jaeger ----------------------------------------------------------------------------------

    def trace(self, trace_id: str) -> list[Span] | None:
        """The spans of a trace as stored (``raw_traces``: no adjustment), ``None`` while Jaeger does
        not know it. ``/api/v3/traces/<id>`` answers OTLP JSON."""
        url = f"{self.jaeger_url}/api/v3/traces/{trace_id}?raw_traces=true"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"jaeger: cannot reach {url}: {exc}") from exc
        if response.status == 404:
            return None
        if response.status != 200:
            raise StackError(f"jaeger: trace {trace_id} -> HTTP {response.status}: {response.body[:500]!r}")
        spans = parse_otlp_trace(response.json())
        return spans or None

    def trace_search(
        self, tags: Mapping[str, str], *, service: str = SERVICE_NAME, limit: int = 100
    ) -> list[str]:
        """Trace IDs of the traces with a span whose attributes match ``tags``, over the run
        (``/api/traces?service=...&tags={...}``: the tag search of Jaeger's query service)."""
        return self.trace_find({"service": service, "tags": json.dumps(dict(tags)), "limit": str(limit)})

    def trace_find(self, params: Mapping[str, str]) -> list[str]:
        """Trace IDs Jaeger's ``/api/traces`` search returns for ``params`` (``service``, ``tags``,
        ``minDuration``, ``operation``, ``limit``, ...); ``service`` defaults to the sidecar's and the
        time range to the run."""
        params = {
            "service": SERVICE_NAME,
            "start": str(int((self.started_at - 86400) * 1e6)),
            "end": str(int((time.time() + 600) * 1e6)),
            "limit": "100",
            **params,
        }
        url = f"{self.jaeger_url}/api/traces?{urlencode(params)}"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"jaeger: cannot reach {url}: {exc}") from exc
        if response.status != 200:
            raise StackError(f"jaeger: search {params} -> HTTP {response.status}: {response.body[:500]!r}")
        return [str(t["traceID"]).rjust(32, "0") for t in response.json().get("data") or []]


def grafana_binary() -> str | None:
    explicit = os.environ.get("GRAFANA_BIN")
    if explicit:
        return explicit
    return shutil.which("grafana-server") or shutil.which("grafana")


GRAFANA_HOWTO = """\
Grafana: no grafana-server (or grafana) binary found, so the stack runs without it.
  Debian has no grafana package. Get it from Grafana Labs:
    - APT repository: https://apt.grafana.com (see https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/),
      then `apt-get install grafana` (binary: /usr/sbin/grafana-server, home: /usr/share/grafana), or
    - the standalone tarball from https://grafana.com/grafana/download (linux amd64), unpacked anywhere.
  Then put it on PATH or set GRAFANA_BIN=/path/to/bin/grafana (and GRAFANA_HOME if the binary is not in
  <home>/bin). The stack provisions grafana/provisioning/ with the data source URLs pointed at the
  native ports and loads grafana/dashboards/.
  Grafana, Loki and Tempo are AGPL-3.0: this native stack runs Jaeger (traces) and VictoriaLogs (logs)
  instead, so a Grafana started here gets the Prometheus and Alertmanager data sources only.
  Without Grafana: Prometheus' UI and API, Jaeger's UI, VictoriaLogs' UI (/select/vmui/), and
  `docker compose up` (which runs Grafana with Loki and Tempo)."""


def _iter_urls(stack: Stack) -> Iterator[str]:
    width = max(len(name) for name in stack.urls())
    for name, url in stack.urls().items():
        yield f"  {name:<{width}}  {url}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description=(
            "Run the whole otel-service stack natively (no Docker) until Ctrl-C: the sidecar, the "
            "collector, Prometheus, Alertmanager, Jaeger (traces) and VictoriaLogs (logs), on "
            "127.0.0.1 only, with the repository's configuration files. Binaries come from "
            "tools/backends.env (make backends)."
        ),
    )
    parser.add_argument(
        "--random-ports",
        action="store_true",
        help="free ports for everything, not the standard ones (5001, 9090, 9093, 9428, 16686, 4317, ...)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory (data and logs) on exit")
    parser.add_argument(
        "--dir", type=Path, default=None, help="data and logs in this directory (kept) instead of a temp dir"
    )
    parser.add_argument(
        "--metric-export-interval", type=int, default=10000, help="sidecar OTEL_METRIC_EXPORT_INTERVAL (ms)"
    )
    args = parser.parse_args(argv)
    # Ctrl-C (and SIGTERM) end the wait below and stop everything, even where the shell started us
    # with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    want_grafana = grafana_binary() is not None
    stack = Stack(
        standard_ports=not args.random_ports,
        workdir=args.dir,
        keep=args.keep,
        metric_export_interval_ms=args.metric_export_interval,
        schedule_delay_ms=1000,
        grafana=want_grafana,
        log=lambda message: print(f"  {message}", flush=True),
    )
    print(
        "starting VictoriaLogs, Jaeger, Prometheus, Alertmanager, the collector and the sidecar ...",
        flush=True,
    )
    try:
        stack.start()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"\nready in {stack.timings['total']:.1f} s; data and logs in {stack.dir}\n")
        print("\n".join(_iter_urls(stack)))
        print(f"\n  bearer token: {stack.token}")
        print(
            f"  try: curl -s -X POST {stack.sidecar_url}/v1/events -H 'Authorization: Bearer {stack.token}' "
            '-H \'Content-Type: application/json\' -d \'{"kind":"llm_call","model":"gpt-4o",'
            '"duration_ms":820,"input_tokens":42,"output_tokens":7}\''
        )
        if not want_grafana:
            print("\n" + GRAFANA_HOWTO)
        print("\nCtrl-C stops everything. Alert notifications sent to the webhook show up below.", flush=True)
        shown = 0
        while True:
            time.sleep(1)
            stack.check_running()
            assert stack.webhook is not None
            calls = stack.webhook.calls()
            for call in calls[shown:]:
                for alert in call.payload.get("alerts", []):
                    labels = alert.get("labels", {})
                    print(
                        f"[webhook {call.path}] {alert.get('status')}: {labels.get('alertname')} "
                        f"({labels.get('severity')}) {alert.get('annotations', {}).get('summary', '')}",
                        flush=True,
                    )
            shown = len(calls)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.close()
        if stack.keep:
            print(f"kept {stack.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
