"""The whole otel-service pipeline, natively on loopback, with the repository's own configuration files.

``Stack`` starts Loki, Tempo, Prometheus, Alertmanager, the OpenTelemetry Collector and the sidecar
(``python -m otel_service serve``) as child processes on free 127.0.0.1 ports, each with the file
docker-compose.yml mounts:

- collector/config.yaml, loki/config.yaml and tempo/config.yaml as they are: every address, port and
  path in them is an environment variable, which the stack sets;
- prometheus/prometheus.yml copied into a temp dir with only its ``host:port`` strings replaced
  (docker service names become 127.0.0.1 and the stack's ports), prometheus/rules/ copied next to it
  and the sidecar's bearer token written to ``secrets/otelsvc_auth_token`` (the path the file reads);
- alertmanager/alertmanager.yml copied with the webhook base URL
  ``http://otel-service-alert-webhook:9099`` replaced by an in-process recorder's URL.

Nothing else in those files changes (intervals included). Binaries come from the environment:
``OTELCOL_BIN LOKI_BIN TEMPO_BIN PROMETHEUS_BIN ALERTMANAGER_BIN`` (``make backends`` writes them to
tools/backends.env). A missing binary, a component that exits or is not ready in time raises
``StackError`` naming the component, with the end of its log.

Run the stack by hand (``make stack``): ``python -m tests.e2e.stack`` uses the standard ports where
they are free, adds Grafana when a ``grafana-server`` binary exists, prints the URLs and waits for
Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import binascii
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

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
WEBHOOK_BASE = "http://otel-service-alert-webhook:9099"
SERVICE_NAME = "otel-service"

#: Environment variable -> (component, what it is).
BINARIES = {
    "OTELCOL_BIN": "collector",
    "LOKI_BIN": "loki",
    "TEMPO_BIN": "tempo",
    "PROMETHEUS_BIN": "prometheus",
    "ALERTMANAGER_BIN": "alertmanager",
}

#: The ports docker-compose.yml and the configuration files use (``python -m tests.e2e.stack``
#: takes these when they are free). Tempo's OTLP receivers default to 4317/4318 too, which the
#: collector owns on one host: they get free ports.
STANDARD_PORTS = {
    "sidecar": 5001,
    "prometheus": 9090,
    "alertmanager": 9093,
    "loki_http": 3100,
    "loki_grpc": 9096,
    "tempo_http": 3200,
    "tempo_grpc": 9095,
    "tempo_otlp_grpc": None,
    "tempo_otlp_http": None,
    "tempo_memberlist": 7946,
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
    "loki:3100": "loki_http",
    "tempo:3200": "tempo_http",
}


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
    """A trace/span ID from Tempo's JSON (base64 in OTLP/JSON, hex in some versions) as hex."""
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
    """One span of a trace as Tempo returns it."""

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


@dataclass(frozen=True)
class LogLine:
    """One Loki entry: its stream labels (index labels and structured metadata), time and line."""

    labels: Mapping[str, str]
    time_ns: int
    line: str

    def json(self) -> Any:
        return json.loads(self.line)


def parse_tempo_trace(document: Mapping[str, Any]) -> list[Span]:
    """Spans of Tempo's ``/api/traces/<id>`` answer (``batches`` or ``trace.resourceSpans``)."""
    resources = document.get("batches")
    if resources is None:
        resources = document.get("trace", {}).get("resourceSpans", [])
    if resources is None:
        resources = document.get("resourceSpans", [])
    spans: list[Span] = []
    for resource_spans in resources:
        resource = {
            kv["key"]: _any_value(kv.get("value", {}))
            for kv in resource_spans.get("resource", {}).get("attributes", [])
        }
        scopes = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or []
        for scope in scopes:
            for raw in scope.get("spans", []):
                spans.append(
                    Span(
                        trace_id=_decode_id(raw.get("traceId")) or "",
                        span_id=_decode_id(raw.get("spanId")) or "",
                        parent_span_id=_decode_id(raw.get("parentSpanId")),
                        name=raw.get("name", ""),
                        kind=str(raw.get("kind", "")),
                        start_ns=int(raw.get("startTimeUnixNano", 0)),
                        end_ns=int(raw.get("endTimeUnixNano", 0)),
                        attributes={
                            kv["key"]: _any_value(kv.get("value", {})) for kv in raw.get("attributes", [])
                        },
                        status_code=str(raw.get("status", {}).get("code", "STATUS_CODE_UNSET")),
                        resource=resource,
                    )
                )
    return spans


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
    """Sidecar + collector + Prometheus + Alertmanager + Loki + Tempo on loopback (a context manager).

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
            backends = ("loki", "tempo", "prometheus", "alertmanager")
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
        """Stop everything: sidecar first (it flushes to the collector), Tempo last-resort SIGKILL."""
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

        loki_env = {
            **env,
            "LOKI_BIND_HOST": HOST,
            "LOKI_HTTP_PORT": str(p["loki_http"]),
            "LOKI_GRPC_PORT": str(p["loki_grpc"]),
            "LOKI_DATA_DIR": str(d / "loki"),
            "LOKI_LOG_LEVEL": "info",
        }
        self.components["loki"] = Component(
            "loki",
            [
                binaries["LOKI_BIN"],
                f"-config.file={REPO / 'loki' / 'config.yaml'}",
                "-config.expand-env=true",
            ],
            loki_env,
            logs / "loki.log",
            f"{self.loki_url}/ready",
            ready_timeout=120,
            stop_grace=15,
        )
        tempo_env = {
            **env,
            "TEMPO_BIND_HOST": HOST,
            "TEMPO_HTTP_PORT": str(p["tempo_http"]),
            "TEMPO_GRPC_PORT": str(p["tempo_grpc"]),
            "TEMPO_OTLP_GRPC_PORT": str(p["tempo_otlp_grpc"]),
            "TEMPO_OTLP_HTTP_PORT": str(p["tempo_otlp_http"]),
            "TEMPO_MEMBERLIST_PORT": str(p["tempo_memberlist"]),
            "TEMPO_DATA_DIR": str(d / "tempo"),
            "TEMPO_REMOTE_WRITE_URL": f"{self.prometheus_url}/api/v1/write",
            "TEMPO_GENERATOR_INTERVAL": "2s",
            "TEMPO_LOG_LEVEL": "info",
        }
        self.components["tempo"] = Component(
            "tempo",
            [
                binaries["TEMPO_BIN"],
                f"-config.file={REPO / 'tempo' / 'config.yaml'}",
                "-config.expand-env=true",
            ],
            tempo_env,
            logs / "tempo.log",
            f"{self.tempo_url}/ready",
            ready_timeout=120,
            # Tempo does not finish a SIGTERM shutdown once it has answered a query: 5 s, then SIGKILL
            # (its WAL makes that safe).
            stop_grace=5,
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
            "TEMPO_OTLP_ENDPOINT": f"{HOST}:{p['tempo_otlp_grpc']}",
            "LOKI_OTLP_ENDPOINT": f"{self.loki_url}/otlp",
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
        """prometheus.yml with only its ``host:port`` targets rewritten; rules and token beside it."""
        source = (REPO / "prometheus" / "prometheus.yml").read_text("utf-8")
        found = set(re.findall(r"""["']([A-Za-z0-9_.-]+:\d+)["']""", source))
        unknown = found - PROMETHEUS_TARGETS.keys()
        missing = PROMETHEUS_TARGETS.keys() - found
        if unknown or missing:
            raise StackError(
                f"prometheus: prometheus/prometheus.yml targets changed: unknown {sorted(unknown)}, "
                f"no longer present {sorted(missing)}; update PROMETHEUS_TARGETS in {__file__}"
            )
        text = source
        for target, port_name in PROMETHEUS_TARGETS.items():
            text = re.sub(
                rf"""(["']){re.escape(target)}(["'])""", rf"\g<1>{HOST}:{self.ports[port_name]}\g<2>", text
            )
        out = self.dir / "prometheus"
        out.mkdir(exist_ok=True)
        (out / "prometheus.yml").write_text(text, "utf-8")
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
        datasources = (REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
        for old, new in (
            ("http://prometheus:9090", self.prometheus_url),
            ("http://loki:3100", self.loki_url),
            ("http://tempo:3200", self.tempo_url),
            ("http://alertmanager:9093", self.alertmanager_url),
        ):
            datasources = datasources.replace(old, new)
        (prov / "datasources" / "datasources.yml").write_text(datasources)
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
    def loki_url(self) -> str:
        return f"http://{HOST}:{self.ports['loki_http']}"

    @property
    def tempo_url(self) -> str:
        return f"http://{HOST}:{self.ports['tempo_http']}"

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
            "Loki": self.loki_url,
            "Tempo": self.tempo_url,
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

    # -- Loki ----------------------------------------------------------------------------------

    def loki_query(
        self, logql: str, *, start: float | None = None, end: float | None = None, limit: int = 5000
    ) -> list[LogLine]:
        """``/loki/api/v1/query_range`` over the run (log lines), oldest first."""
        now = time.time()
        params = {
            "query": logql,
            "start": str(int((start if start is not None else self.started_at - 7200) * 1e9)),
            "end": str(int((end if end is not None else now + 600) * 1e9)),
            "limit": str(limit),
            "direction": "forward",
        }
        url = f"{self.loki_url}/loki/api/v1/query_range?{urlencode(params)}"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"loki: cannot reach {url}: {exc}") from exc
        if response.status != 200:
            raise StackError(f"loki: {logql} -> HTTP {response.status}: {response.body[:500]!r}")
        data = response.json()["data"]
        lines = [
            LogLine(stream["stream"], int(ts), line)
            for stream in data["result"]
            for ts, line in stream["values"]
        ]
        lines.sort(key=lambda entry: entry.time_ns)
        return lines

    def loki_instant(self, logql: str) -> list[dict[str, Any]]:
        """``/loki/api/v1/query``: a metric query (``sum(count_over_time(...))``) evaluated now."""
        url = f"{self.loki_url}/loki/api/v1/query?{urlencode({'query': logql})}"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"loki: cannot reach {url}: {exc}") from exc
        if response.status != 200:
            raise StackError(f"loki: {logql} -> HTTP {response.status}: {response.body[:500]!r}")
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    # -- Tempo ---------------------------------------------------------------------------------

    def tempo_trace(self, trace_id: str) -> list[Span] | None:
        """The spans of a trace (``None`` while Tempo does not know it)."""
        url = f"{self.tempo_url}/api/traces/{trace_id}"
        try:
            response = http_request("GET", url, headers={"Accept": "application/json"}, timeout=30)
        except OSError as exc:
            raise StackError(f"tempo: cannot reach {url}: {exc}") from exc
        if response.status == 404:
            return None
        if response.status != 200:
            raise StackError(f"tempo: trace {trace_id} -> HTTP {response.status}: {response.body[:500]!r}")
        spans = parse_tempo_trace(response.json())
        return spans or None

    def tempo_search(self, traceql: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """``/api/search`` with a TraceQL query over the run: the matching traces (IDs, root names)."""
        params = {
            "q": traceql,
            "start": str(int(self.started_at - 7200)),
            "end": str(int(time.time() + 600)),
            "limit": str(limit),
        }
        url = f"{self.tempo_url}/api/search?{urlencode(params)}"
        try:
            response = http_request("GET", url, timeout=30)
        except OSError as exc:
            raise StackError(f"tempo: cannot reach {url}: {exc}") from exc
        if response.status != 200:
            raise StackError(f"tempo: {traceql} -> HTTP {response.status}: {response.body[:500]!r}")
        traces: list[dict[str, Any]] = response.json().get("traces") or []
        return traces


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
  Without Grafana: Prometheus' UI, Loki and Tempo's HTTP APIs, and `docker compose up` (which has Grafana)."""


def _iter_urls(stack: Stack) -> Iterator[str]:
    width = max(len(name) for name in stack.urls())
    for name, url in stack.urls().items():
        yield f"  {name:<{width}}  {url}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.stack",
        description="Run the whole otel-service stack natively (no Docker) until Ctrl-C.",
    )
    parser.add_argument("--random-ports", action="store_true", help="do not try the standard ports")
    parser.add_argument("--keep", action="store_true", help="keep the data directory on exit")
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
        keep=args.keep,
        metric_export_interval_ms=args.metric_export_interval,
        schedule_delay_ms=1000,
        grafana=want_grafana,
        log=lambda message: print(f"  {message}", flush=True),
    )
    print("starting loki, tempo, prometheus, alertmanager, collector and the sidecar ...", flush=True)
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
