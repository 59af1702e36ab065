"""kill -9 loop: exact metric totals across crashes of any sidecar process, under load.

Starts the sidecar (two intake processes, an export process and its store process) with a loopback
OTLP receiver, posts batches of events from one thread, and kill -9s in turn the whole sidecar (then
starts it again on the same spool), its export process, its second intake process and the store
process (the sidecar replaces those). Then
it reconciles what the receiver got with what was acknowledged:

- spans and log records: every acknowledged event arrives (lost must be 0); copies beyond the first
  are at most the resends the sidecar counted;
- metric totals (``ai_requests``, the duration histogram's count, ``ai_tokens_used``, the intake's
  ``otel_service.events.received``): exactly the events the sidecar owns (acknowledged, plus any a
  kill cut short after they were spooled), under one series identity through every restart;
- the event store: one row per event the receiver got, none missing and none twice.

    python bench/kill_loop.py [--kills 20] [--batch 20]

Exits 1 if any check fails. Everything stays on loopback; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from otel_service.testing import OtlpReceiver

EVENT = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 12, "input_tokens": 5, "business_id": "b"}
DURATION = "gen_ai.client.operation.duration"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def serve(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "otel_service", "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: kill -9 reaches every process
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(port, "/ready")
            return process
        except (OSError, ValueError):
            time.sleep(0.1)
    raise SystemExit(f"the sidecar did not start:\n{log.read_text()[-3000:]}")


def post(port: int, count: int) -> int:
    """Events acknowledged (-1: no answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps([EVENT] * count).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(json.loads(response.read())["accepted"])
    except (OSError, ValueError):
        return -1


def spawned(pid: int) -> list[psutil.Process]:
    """``pid``'s living children started by multiprocessing (a killed one not yet reaped is left out)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie until its parent reaps it
            continue
    return found


def replaced(pid: int, port: int, victim: int) -> bool:
    try:
        children = {p.pid for p in spawned(pid)}
        get(port, "/ready")
    except (OSError, ValueError, psutil.Error):
        return False
    return len(children) == 2 and victim not in children


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20, help="events per request")
    args = parser.parse_args()
    started = time.monotonic()
    with OtlpReceiver() as receiver, tempfile.TemporaryDirectory() as scratch:
        env = {
            "OTELSVC_SPOOL_DIR": str(Path(scratch) / "spool"),
            "OTELSVC_INTAKE_PROCESSES": "2",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        port, log = free_port(), Path(scratch) / "serve.log"
        process = serve(port, env, log)
        acked, cut = 0, 0
        kills = {"sidecar": 0, "export": 0, "intake": 0, "store": 0}
        stop = threading.Event()

        def load() -> None:
            nonlocal acked
            while not stop.is_set():
                got = post(port, args.batch)
                if got < 0:
                    time.sleep(0.05)
                else:
                    acked += got

        sender = threading.Thread(target=load)
        sender.start()
        try:
            for kill in range(args.kills):
                time.sleep(0.3 + 0.1 * (kill % 5))
                target = ("sidecar", "export", "intake", "store")[kill % 4]
                kills[target] += 1
                if target == "sidecar":
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    process = serve(port, env, log)
                    cut += 1
                    continue
                intake = {row["pid"] for row in get(port, "/health/detailed")["intake_processes"]}
                [victim] = [p for p in spawned(process.pid) if (p.pid in intake) == (target == "intake")]
                if target == "store":  # the export process's child (started with it: wait for it)
                    export = victim
                    deadline = time.monotonic() + 60
                    while len(stores := spawned(export.pid)) != 1 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    [victim] = stores
                    victim.kill()
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and [p.pid for p in spawned(export.pid)] in (
                        [],
                        [victim.pid],
                    ):
                        time.sleep(0.1)
                    continue
                victim.kill()
                cut += target == "intake"
                deadline = time.monotonic() + 60
                while not replaced(process.pid, port, victim.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            stop.set()
            sender.join()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                owned = len({s.span_id for s in receiver.spans()})
                if owned >= acked and receiver.metric_total("ai_requests") == owned:
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # one more push: the totals stay put
            resends = sum(
                float(line.rsplit(" ", 1)[1])
                for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
                .splitlines()
                if line.startswith("otel_service_export_duplicates_total{")
            )
        finally:
            stop.set()
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        spans = receiver.spans()
        owned = len({s.span_id for s in spans})
        with sqlite3.connect(Path(scratch) / "spool" / "events.sqlite") as store:
            stored = store.execute("SELECT span_id FROM events").fetchall()
        row = {
            "kills": kills,
            "acknowledged": acked,
            "owned (distinct spans)": owned,
            "cut short but spooled": owned - acked,
            "lost": max(0, acked - owned),
            "log records (distinct)": len({r.span_id for r in receiver.logs()}),
            "span copies observed": len(spans) - owned,
            "resends counted": int(resends),
            "ai_requests": receiver.metric_total("ai_requests"),
            "duration count": receiver.metric_total(DURATION),
            "ai_tokens_used": receiver.metric_total("ai_tokens_used"),
            "events.received": receiver.metric_total("otel_service.events.received"),
            "series identities": len(receiver.metric_identities("ai_requests", DURATION)),
            "store rows": len(stored),
            "store rows missing": len({s.span_id.hex() for s in spans} - {row[0] for row in stored}),
            "seconds": round(time.monotonic() - started, 1),
        }
    print(json.dumps(row))
    ok = (
        row["lost"] == 0
        and owned - acked <= args.batch * cut
        and row["log records (distinct)"] == owned
        and row["span copies observed"] <= row["resends counted"]
        and row["ai_requests"] == row["duration count"] == owned
        and row["ai_tokens_used"] == 5 * owned
        and acked <= row["events.received"] <= owned
        and row["series identities"] == 1
        and row["store rows"] == owned
        and row["store rows missing"] == 0
    )
    print("kill loop:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
