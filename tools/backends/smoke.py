#!/usr/bin/env python3
"""Smoke test of the real backends with the repo's configs (stdlib only).

Starts Loki, Tempo, Prometheus (minimal config of its own) and the otel-service collector natively
on free loopback ports, with data in a temp dir, sends one OTLP/JSON log, trace and metric to the
collector's HTTP receiver, and checks what Loki, Tempo, the collector's prometheus exporter and
Prometheus answer. Kills everything it started.

    eval "$(tools/backends.sh paths)" && python3 tools/backends/smoke.py [--keep]
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        return 0, str(e).encode()


def wait_for(what: str, fn, timeout: float = 90.0, interval: float = 0.5):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        ok, last = fn()
        if ok:
            print(f"  ok  {what} ({time.monotonic() - t0:.1f}s)")
            return last
        time.sleep(interval)
    raise SystemExit(f"FAIL {what}: timed out after {timeout:.0f}s; last answer: {last!r}"[:2000])


def main() -> int:
    keep = "--keep" in sys.argv
    bins = {k: os.environ.get(k) for k in ("OTELCOL_BIN", "LOKI_BIN", "TEMPO_BIN", "PROMETHEUS_BIN")}
    missing = [k for k, v in bins.items() if not v or not os.access(v, os.X_OK)]
    if missing:
        raise SystemExit(f"missing {missing}: run  eval \"$(tools/backends.sh paths)\"  first")

    tmp = Path(tempfile.mkdtemp(prefix="otel-backends-smoke-"))
    (p_loki_http, p_loki_grpc, p_tempo_http, p_tempo_grpc, p_tempo_otlp_grpc, p_tempo_otlp_http,
     p_tempo_ml, p_prom, p_col_grpc, p_col_http, p_col_prom, p_col_health, p_col_tel,
     p_col_pprof) = free_ports(14)

    env = dict(os.environ)
    env.update({
        "LOKI_BIND_HOST": HOST, "LOKI_HTTP_PORT": str(p_loki_http), "LOKI_GRPC_PORT": str(p_loki_grpc),
        "LOKI_DATA_DIR": str(tmp / "loki"),
        "TEMPO_BIND_HOST": HOST, "TEMPO_HTTP_PORT": str(p_tempo_http),
        "TEMPO_GRPC_PORT": str(p_tempo_grpc), "TEMPO_OTLP_GRPC_PORT": str(p_tempo_otlp_grpc),
        "TEMPO_OTLP_HTTP_PORT": str(p_tempo_otlp_http), "TEMPO_MEMBERLIST_PORT": str(p_tempo_ml),
        "TEMPO_DATA_DIR": str(tmp / "tempo"), "TEMPO_GENERATOR_INTERVAL": "2s",
        "TEMPO_REMOTE_WRITE_URL": f"http://{HOST}:{p_prom}/api/v1/write",
        "OTELCOL_BIND_HOST": HOST, "OTELCOL_OTLP_GRPC_PORT": str(p_col_grpc),
        "OTELCOL_OTLP_HTTP_PORT": str(p_col_http), "OTELCOL_PROMETHEUS_PORT": str(p_col_prom),
        "OTELCOL_HEALTH_PORT": str(p_col_health), "OTELCOL_TELEMETRY_PORT": str(p_col_tel),
        "OTELCOL_PPROF_ENDPOINT": f"{HOST}:{p_col_pprof}",
        "OTELCOL_STORAGE_DIR": str(tmp / "otelcol-storage"),
        "TEMPO_OTLP_ENDPOINT": f"{HOST}:{p_tempo_otlp_grpc}",
        "LOKI_OTLP_ENDPOINT": f"http://{HOST}:{p_loki_http}/otlp",
    })
    prom_cfg = tmp / "prometheus.yml"
    prom_cfg.write_text(
        "global:\n  scrape_interval: 2s\n"
        "scrape_configs:\n"
        "  - job_name: otelcol-exporter\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{HOST}:{p_col_prom}']}}]\n"
        "  - job_name: otelcol\n"
        f"    static_configs: [{{targets: ['{HOST}:{p_col_tel}']}}]\n"
    )

    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, argv: list[str]) -> None:
        log = open(tmp / f"{name}.log", "wb")
        print(f"start {name}: {' '.join(argv)}")
        procs.append((name, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)))

    def check_alive() -> None:
        for name, p in procs:
            if p.poll() is not None:
                tail = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"FAIL {name} exited with {p.returncode}:\n{tail}")

    try:
        start("loki", [bins["LOKI_BIN"], "-config.file=loki/config.yaml", "-config.expand-env=true"])
        start("tempo", [bins["TEMPO_BIN"], "-config.file=tempo/config.yaml", "-config.expand-env=true"])
        start("prometheus", [bins["PROMETHEUS_BIN"], f"--config.file={prom_cfg}",
                             f"--storage.tsdb.path={tmp / 'prometheus'}",
                             f"--web.listen-address={HOST}:{p_prom}",
                             "--web.enable-remote-write-receiver",
                             "--enable-feature=exemplar-storage"])
        start("otelcol", [bins["OTELCOL_BIN"], "--config=collector/config.yaml"])

        def ready(url: str, want: bytes | None = None):
            def f():
                check_alive()
                code, body = http("GET", url)
                return code == 200 and (want is None or want in body), (code, body[:300])
            return f

        wait_for("collector health_check /", ready(f"http://{HOST}:{p_col_health}/"))
        wait_for("loki /ready", ready(f"http://{HOST}:{p_loki_http}/ready", b"ready"), timeout=120)
        wait_for("tempo /ready", ready(f"http://{HOST}:{p_tempo_http}/ready", b"ready"), timeout=120)
        wait_for("prometheus /-/ready", ready(f"http://{HOST}:{p_prom}/-/ready"))

        svc = f"smoke-{secrets.token_hex(3)}"
        trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
        corr = f"corr-{secrets.token_hex(4)}"
        now = time.time_ns()
        resource = {"attributes": [
            {"key": "service.name", "value": {"stringValue": svc}},
            {"key": "service.namespace", "value": {"stringValue": "otel-service"}},
            {"key": "service.instance.id", "value": {"stringValue": "instance-1"}},
            {"key": "process.command_line", "value": {"stringValue": "python --api-key=SECRET"}},
        ]}
        col = f"http://{HOST}:{p_col_http}"
        hdr = {"Content-Type": "application/json"}

        logs = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"scope": {"name": "smoke"},
                "logRecords": [{"timeUnixNano": str(now), "severityText": "INFO", "severityNumber": 9,
                                "body": {"stringValue": "smoke log line"},
                                "traceId": trace_id, "spanId": span_id,
                                "attributes": [
                                    {"key": "correlation_id", "value": {"stringValue": corr}},
                                    {"key": "user.email", "value": {"stringValue": "a@b.c"}}]}]}]}]}
        code, body = http("POST", f"{col}/v1/logs", json.dumps(logs).encode(), hdr)
        assert code == 200, (code, body)
        print(f"  ok  POST /v1/logs -> {code}")

        spans = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "smoke"},
                 "spans": [{"traceId": trace_id, "spanId": span_id, "name": "smoke-span", "kind": 2,
                            "startTimeUnixNano": str(now - 50_000_000), "endTimeUnixNano": str(now),
                            "attributes": [
                                {"key": "correlation_id", "value": {"stringValue": corr}},
                                {"key": "user.email", "value": {"stringValue": "a@b.c"}},
                                {"key": "db.password", "value": {"stringValue": "hunter2"}},
                                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "42"}}]}]}]}]}
        code, body = http("POST", f"{col}/v1/traces", json.dumps(spans).encode(), hdr)
        assert code == 200, (code, body)
        print(f"  ok  POST /v1/traces -> {code}")

        metrics = {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"scope": {"name": "smoke"},
                   "metrics": [{"name": "smoke.requests", "unit": "1", "sum": {
                       "aggregationTemporality": 2, "isMonotonic": True,
                       "dataPoints": [{"asInt": "7", "startTimeUnixNano": str(now - 10**9),
                                       "timeUnixNano": str(now),
                                       "attributes": [{"key": "route", "value": {"stringValue": "/x"}}],
                                       "exemplars": [{"asInt": "1", "timeUnixNano": str(now),
                                                      "traceId": trace_id, "spanId": span_id}]}]}}]}]}]}
        code, body = http("POST", f"{col}/v1/metrics", json.dumps(metrics).encode(), hdr)
        assert code == 200, (code, body)
        print(f"  ok  POST /v1/metrics -> {code}")

        # --- Loki: stream by service_name label, structured metadata filters
        def loki_query(q: str):
            def f():
                qs = urllib.parse.urlencode({"query": q, "start": str(now - 3600 * 10**9),
                                             "end": str(now + 60 * 10**9), "limit": "10"})
                code, body = http("GET", f"http://{HOST}:{p_loki_http}/loki/api/v1/query_range?{qs}")
                if code != 200:
                    return False, (code, body[:300])
                res = json.loads(body)["data"]["result"]
                return bool(res), res
            return f
        res = wait_for(f'loki {{service_name="{svc}"}}', loki_query(f'{{service_name="{svc}"}}'), timeout=60)
        stream = res[0]["stream"]
        print(f"      stream labels+metadata: {json.dumps(stream, sort_keys=True)}")
        assert stream.get("correlation_id") == corr and stream.get("trace_id") == trace_id, stream
        assert "user_email" not in stream and "process_command_line" not in stream, stream
        wait_for(f'loki {{service_name="{svc}"}} | correlation_id="{corr}" | trace_id="{trace_id}"',
                 loki_query(f'{{service_name="{svc}"}} | correlation_id="{corr}" | trace_id="{trace_id}"'),
                 timeout=10)
        code, body = http("GET", f"http://{HOST}:{p_loki_http}/loki/api/v1/labels")
        print(f"      loki index labels: {json.loads(body).get('data')}")

        # --- Tempo: trace by id
        def tempo_trace():
            code, body = http("GET", f"http://{HOST}:{p_tempo_http}/api/traces/{trace_id}",
                              headers={"Accept": "application/json"})
            return code == 200, (body if code == 200 else (code, body[:300]))
        tr = json.loads(wait_for(f"tempo /api/traces/{trace_id}", tempo_trace, timeout=60))
        span = tr["batches"][0]["scopeSpans"][0]["spans"][0] if "batches" in tr else \
            tr["trace"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        attrs = {a["key"]: a["value"] for a in span.get("attributes", [])}
        print(f"      span attributes: {json.dumps(attrs, sort_keys=True)}")
        assert "user.email" not in attrs, attrs
        assert attrs.get("db.password", {}).get("stringValue") == "****", attrs
        assert attrs.get("gen_ai.usage.input_tokens", {}).get("intValue") in ("42", 42), attrs
        assert attrs.get("correlation_id", {}).get("stringValue") == corr, attrs

        # --- collector prometheus exporter (OpenMetrics with exemplar)
        def exporter():
            code, body = http("GET", f"http://{HOST}:{p_col_prom}/metrics",
                              headers={"Accept": "application/openmetrics-text;version=1.0.0"})
            return code == 200 and b"smoke_requests_total" in body, body
        body = wait_for("collector exporter smoke_requests_total", exporter, timeout=30)
        lines = [ln for ln in body.decode().splitlines() if "smoke_requests" in ln or ln.startswith("target_info")]
        print("      " + "\n      ".join(lines))
        assert any(f'trace_id="{trace_id}"' in ln for ln in lines), "no exemplar with trace_id"

        code, body = http("GET", f"http://{HOST}:{p_col_tel}/metrics")
        assert code == 200 and b"otelcol_" in body, (code, body[:200])
        print("  ok  collector own telemetry /metrics has otelcol_* series")

        # --- Prometheus: scraped series, exemplar, Tempo metrics-generator remote write
        def prom(q: str, path: str = "query", extra: dict | None = None):
            def f():
                qs = urllib.parse.urlencode({"query": q, **(extra or {})})
                code, body = http("GET", f"http://{HOST}:{p_prom}/api/v1/{path}?{qs}")
                if code != 200:
                    return False, (code, body[:300])
                data = json.loads(body)["data"]
                res = data["result"] if isinstance(data, dict) else data
                return bool(res), res
            return f
        res = wait_for("prometheus smoke_requests_total", prom("smoke_requests_total"), timeout=30)
        print(f"      {json.dumps(res[0]['metric'], sort_keys=True)}")
        t = time.time()
        res = wait_for("prometheus exemplars", prom("smoke_requests_total", "query_exemplars",
                                                    {"start": str(t - 600), "end": str(t + 60)}),
                       timeout=30)
        print(f"      exemplar labels: {res[0]['exemplars'][0]['labels']}")
        res = wait_for("prometheus traces_spanmetrics_calls_total (tempo metrics-generator)",
                       prom(f'traces_spanmetrics_calls_total{{service="{svc}"}}'), timeout=90, interval=2)
        print(f"      {json.dumps(res[0]['metric'], sort_keys=True)}")
        print("PASS all backends")
        return 0
    finally:
        for name, p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        t0 = time.monotonic()
        for name, p in reversed(procs):
            # Tempo (this snapshot) never finishes a SIGTERM shutdown once it has answered a query
            # (query-frontend queue deadlock, upstream); its WAL makes SIGKILL safe.
            try:
                p.wait(timeout=max(0.1, 10 - (time.monotonic() - t0)))
                print(f"stopped {name} (exit {p.returncode}) at +{time.monotonic() - t0:.1f}s")
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                print(f"killed {name} at +{time.monotonic() - t0:.1f}s (SIGTERM grace over)")
        if keep:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
