"""Throughput and latency of the sidecar with every signal exported over OTLP to a loopback receiver.

Prints events/s, p50/p99 latency, server CPU µs per event (intake + export processes) and RSS, for
single events and batches of 100 (wrk, closed loop), and latency at a fixed 500 requests/s (open
loop). Afterwards it checks that every accepted event's span and log record reached the receiver.

    python bench/throughput.py [--duration 15] [--connections 32] [--protocol grpc] [--fsync never]
                               [--intake-processes auto] [--store on|off] [--scenarios wrk|all]

``--store off`` runs the sidecar without its event store (``OTELSVC_STORE=off``), to measure what
the store costs; ``--scenarios wrk`` runs the two closed-loop scenarios only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from otel_service.testing import Failure, OtlpReceiver

EVENT = {
    "kind": "llm_call",
    "model": "gemini-1.5-flash",
    "duration_ms": 850,
    "input_tokens": 420,
    "output_tokens": 96,
    "business_id": "acme",
    "conversation_id": "conv-123",
    "session_id": "sess-456",
    "intent": "booking",
    "response_type": "text",
    "appointment_requested": True,
    "user_message_length": 45,
    "response_length": 380,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Server:
    def __init__(
        self,
        endpoint: str,
        protocol: str,
        fsync: str,
        spool_root: str | None,
        intake_processes: str | None,
        store: str = "on",
    ) -> None:
        self.port = free_port()
        self.spool = tempfile.mkdtemp(prefix="otelsvc-bench-", dir=spool_root)
        env = {
            **os.environ,
            "OTELSVC_PORT": str(self.port),
            "OTELSVC_SPOOL_DIR": self.spool,
            "OTELSVC_SPOOL_FSYNC": fsync,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTELSVC_STORE": store,
        }
        if intake_processes is not None:  # else the sidecar's default
            env["OTELSVC_INTAKE_PROCESSES"] = intake_processes
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otel_service", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                get_json(f"{self.url}/ready")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.ps = psutil.Process(self.process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def processes(self) -> list[psutil.Process]:
        return [self.ps, *self.ps.children(recursive=True)]

    def cpu_seconds(self) -> list[float]:
        """CPU seconds of the intake process, then of its children (export process...)."""
        out = []
        for proc in self.processes():
            times = proc.cpu_times()
            out.append(times.user + times.system)
        return out

    def rss_mb(self) -> list[float]:
        return [round(proc.memory_info().rss / 2**20, 1) for proc in self.processes()]

    def accepted(self) -> int:
        time.sleep(0.5)  # other intake processes publish their counts every 0.25 s
        return sum(get_json(f"{self.url}/health/detailed")["events"]["accepted"].values())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        shutil.rmtree(self.spool, ignore_errors=True)


def wrk(url: str, body: str, duration: int, connections: int) -> dict[str, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("P50 %f\\nP99 %f\\n", latency:percentile(50), latency:percentile(99)))\n'
        "end\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": float(re.search(r"P50 ([\d.]+)", out).group(1)) / 1000,
        "p99_ms": float(re.search(r"P99 ([\d.]+)", out).group(1)) / 1000,
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


async def open_loop(url: str, rate: float, duration: float) -> dict[str, float]:
    """Send at a fixed rate regardless of answers; latency measured per request."""
    body = json.dumps(EVENT).encode()
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 202:
                    errors += 1
            latencies.append(time.perf_counter() - start)

        tasks = []
        begin = time.perf_counter()
        n = int(rate * duration)
        for i in range(n):
            target = begin + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "requests": n,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
        "errors": errors,
    }


def wait_delivered(receiver: OtlpReceiver, expected: int, timeout: float = 300) -> float:
    start = time.monotonic()
    receiver.wait_for_spans(expected, timeout)
    receiver.wait_for_logs(expected, max(1.0, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def scenario(
    name: str, server: Server, receiver: OtlpReceiver, run, events_per_request: int, heal=None
) -> dict:
    before_cpu = server.cpu_seconds()
    before_accepted = server.accepted()
    before_spans = receiver.counts["traces"]
    started = time.monotonic()
    result = run()
    load_seconds = time.monotonic() - started
    accepted = server.accepted() - before_accepted
    if heal is not None:
        heal()
    drain = wait_delivered(receiver, before_spans + accepted)
    after_cpu = server.cpu_seconds()
    per_process = [a - b for a, b in zip(after_cpu, before_cpu, strict=False)]
    cpu = sum(per_process)
    delivered_spans = receiver.counts["traces"] - before_spans
    row = {
        "scenario": name,
        "events_per_s": round(accepted / load_seconds),
        "delivered_events_per_s": round(accepted / (load_seconds + drain)),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "cpu_us_per_event": round(cpu / max(1, accepted) * 1e6, 1),
        "cpu_us_per_event_by_process": [round(c / max(1, accepted) * 1e6, 1) for c in per_process],
        "rss_mb": server.rss_mb(),
        "accepted": accepted,
        "spans_delivered": delivered_spans,
        "drain_s": round(drain, 2),
        "errors": result["errors"],
    }
    print(json.dumps(row), flush=True)
    return row


def open_loop_scenarios(args: argparse.Namespace, server: Server, receiver: OtlpReceiver) -> list[dict]:
    """At a fixed rate; then with the collector refusing everything, then answering slowly."""
    rows = []
    rows.append(scenario(
        f"single events at {args.rate:.0f}/s (open loop)", server, receiver,
        lambda: asyncio.run(open_loop(f"{server.url}/v1/events", args.rate, args.duration)), 1,
    ))  # fmt: skip
    # Export off the request path: the same fixed rate with the collector refusing
    # everything, then answering slowly (intake latency should not move).
    receiver.fail(Failure(count=10**9))
    rows.append(scenario(
        f"at {args.rate:.0f}/s, collector down (503)", server, receiver,
        lambda: asyncio.run(open_loop(f"{server.url}/v1/events", args.rate, args.duration)), 1,
        heal=receiver.heal,
    ))  # fmt: skip
    receiver.delay = 0.5
    rows.append(scenario(
        f"at {args.rate:.0f}/s, collector slow (0.5 s)", server, receiver,
        lambda: asyncio.run(open_loop(f"{server.url}/v1/events", args.rate, args.duration)), 1,
    ))  # fmt: skip
    receiver.delay = 0.0
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http/protobuf"])
    parser.add_argument("--fsync", default="never", choices=["never", "interval", "always"])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--intake-processes", default=None, help="OTELSVC_INTAKE_PROCESSES (default: the sidecar's, auto)"
    )
    parser.add_argument(
        "--spool-root", default=None, help="where the spool lives (e.g. /dev/shm: no disk I/O at all)"
    )
    parser.add_argument("--store", default="on", choices=["on", "off"], help="OTELSVC_STORE")
    parser.add_argument(
        "--scenarios", default="all", choices=["all", "wrk"], help="wrk: single events and batches only"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    rows = []
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if args.protocol == "grpc" else receiver.http_endpoint
        server = Server(
            endpoint, args.protocol, args.fsync, args.spool_root, args.intake_processes, args.store
        )
        try:
            single = json.dumps(EVENT)
            batch = json.dumps([EVENT] * 100)
            wrk(f"{server.url}/v1/events", single, 3, args.connections)  # warm-up
            wait_delivered(receiver, server.accepted())
            rows.append(scenario(
                "single events (wrk)", server, receiver,
                lambda: wrk(f"{server.url}/v1/events", single, args.duration, args.connections), 1,
            ))  # fmt: skip
            rows.append(scenario(
                "batches of 100 (wrk)", server, receiver,
                lambda: wrk(f"{server.url}/v1/events", batch, args.duration, 8), 100,
            ))  # fmt: skip
            if args.scenarios == "all":
                rows.extend(open_loop_scenarios(args, server, receiver))
            detail = get_json(f"{server.url}/health/detailed")
        finally:
            server.stop()
        lost = sum(r["accepted"] - r["spans_delivered"] for r in rows)
        print(
            f"\nstore={args.store} protocol={args.protocol} fsync={args.fsync} "
            f"spool={args.spool_root or tempfile.gettempdir()} "
            f"cores={os.cpu_count()} intake_processes={len(detail['intake_processes'])} "
            f"dropped={detail['export']['dropped']} lost={lost}"
        )
        print(f"{'scenario':42} {'events/s':>9} {'delivered/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'CPU us/ev':>9} {'(intake, tracker, export, more intake)':>26} {'RSS MB':>20}")  # fmt: skip
        for r in rows:
            print(f"{r['scenario']:42} {r['events_per_s']:>9} {r['delivered_events_per_s']:>11} "
                  f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r['cpu_us_per_event']:>9} "
                  f"{r['cpu_us_per_event_by_process']!s:>26} {r['rss_mb']!s:>20}")  # fmt: skip
        return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
