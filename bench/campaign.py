"""A bounded hardening campaign against a real sidecar on loopback: fuzz, faults and floods.

Starts the sidecar (its default: two intake processes and an export process) with a loopback OTLP
receiver, then:

- fuzz: mutated bodies on ``/track`` and ``/v1/events`` (``otel_service.testing.mutated_bodies``):
  status codes, 5xx (must be 0), and whether the refusals the sidecar counted match those answered;
- faults: events sent while the collector is down, slower than the OTLP timeout, or answering 503
  with ``Retry-After``: accepted, delivered, lost (must be 0), duplicates observed vs counted;
- floods: idle connections beyond the bound and slowloris clients, while a client from another
  loopback address posts events: refused connections, and whether that client was served;
- RSS of every sidecar process before and after.

    python bench/campaign.py [--fuzz 1000] [--events 2000]

Every count and wait is bounded; everything stays on 127.0.0.0/8. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from throughput import Server, get_json

from otel_service.testing import Failure, OtlpReceiver, mutated_bodies

SEEDS: dict[str, Any] = {
    "/track": {"business_id": "b", "response_time_ms": 12, "tokens_used": 30, "model_name": "gpt-4o"},
    "/v1/events": [{"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "input_tokens": 3},
                   {"kind": "prediction", "model": "m", "model_version": "1", "duration_ms": 2}],
}  # fmt: skip
EVENT = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 5, "input_tokens": 3, "output_tokens": 2}


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"raw": text.decode("utf-8", "replace")}


def rejected_total(server: Server) -> int:
    time.sleep(0.5)  # other intake processes publish their counts every 0.25 s
    return sum(get_json(f"{server.url}/health/detailed")["events"]["rejected"].values())


def fuzz(server: Server, cases: int) -> list[dict[str, Any]]:
    rows = []
    for path, seed in SEEDS.items():
        before = rejected_total(server)
        statuses: Counter[int] = Counter()
        refused = 0
        for body in mutated_bodies(seed, cases, seed=f"campaign:{path}"):
            status, answer = post(server.url + path, body)
            statuses[status] += 1
            if status >= 400:
                refused += len(answer.get("errors") or [answer])
            else:
                refused += int(answer.get("rejected", 0))
        counted = rejected_total(server) - before
        rows.append(
            {"endpoint": path, "cases": cases, "statuses": dict(sorted(statuses.items())),
             "5xx": sum(n for s, n in statuses.items() if s >= 500), "refused": refused, "counted": counted}
        )  # fmt: skip
    return rows


def faults(server: Server, receiver: OtlpReceiver, events: int) -> list[dict[str, Any]]:
    scenarios = [
        ("collector down 3 s", lambda: receiver.fail(Failure(count=10**9)), 3.0),
        ("collector slower than the OTLP timeout", lambda: setattr(receiver, "delay", 1.5), 3.0),
        ("503 + Retry-After 1 s, 20 times", lambda: receiver.fail(Failure(count=20, retry_after=1)), 0.0),
    ]
    rows = []
    for name, start, hold in scenarios:
        spans_before = len(receiver.spans())
        unique_before = len({span.span_id for span in receiver.spans()})
        counted_before = get_json(f"{server.url}/health/detailed")["export"].get("possible_duplicates", 0)
        start()
        accepted = 0
        body = json.dumps([EVENT] * 100).encode()
        for _ in range(events // 100):
            status, answer = post(server.url + "/v1/events", body)
            accepted += int(answer.get("accepted", 0)) if status == 202 else 0
        time.sleep(hold)
        receiver.heal()
        receiver.delay = 0.0
        deadline = time.monotonic() + 120
        while len({s.span_id for s in receiver.spans()}) - unique_before < accepted:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(2.0)  # late copies of slow requests land
        spans = receiver.spans()
        unique = len({span.span_id for span in spans}) - unique_before
        counted = get_json(f"{server.url}/health/detailed")["export"].get("possible_duplicates", 0)
        rows.append(
            {"scenario": name, "accepted": accepted, "delivered": unique, "lost": accepted - unique,
             "duplicates observed": len(spans) - spans_before - unique,
             "duplicates counted": counted - counted_before}
        )  # fmt: skip
    return rows


def _closed(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def floods(server: Server, idle: int, slow: int) -> dict[str, Any]:
    before = get_json(f"{server.url}/health/detailed")["events"]["rejected"]
    sockets = []
    for _ in range(idle):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        except OSError:
            break
    slowloris = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(slow)]
    for sock in slowloris:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    served = 0
    for _ in range(10):  # another client address while the flood holds
        client = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0))
        body = json.dumps(EVENT).encode()
        client.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        served += client.recv(4096).startswith(b"HTTP/1.1 202")
        client.close()
    closed_slow = sum(_closed(sock, 15) for sock in slowloris)
    for sock in (*sockets, *slowloris):
        sock.close()
    after = rejected_total(server)
    return {
        "idle connections opened": len(sockets),
        "slowloris clients": slow,
        "slowloris closed by the deadline": closed_slow,
        "other client served (of 10)": served,
        "connections refused (counted)": after - sum(before.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fuzz", type=int, default=1000, help="cases per endpoint")
    parser.add_argument("--events", type=int, default=2000, help="events per fault scenario")
    args = parser.parse_args()
    os.environ.update(
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTELSVC_HEADER_TIMEOUT": "2",
         "OTELSVC_MAX_CONNECTIONS": "256", "OTELSVC_MAX_CONNECTIONS_PER_CLIENT": "128"}
    )  # fmt: skip
    failed = False
    with OtlpReceiver() as receiver:
        server = Server(receiver.grpc_endpoint, "grpc", "never", None, None)
        try:
            rss_before = server.rss_mb()
            print("campaign: fuzz", file=sys.stderr, flush=True)
            fuzz_rows = fuzz(server, args.fuzz)
            print("campaign: faults", file=sys.stderr, flush=True)
            fault_rows = faults(server, receiver, args.events)
            print("campaign: floods", file=sys.stderr, flush=True)
            flood = floods(server, idle=400, slow=20)
            rss_after = server.rss_mb()
        finally:
            server.stop()
    print("\n## fuzz")
    for row in fuzz_rows:
        print(json.dumps(row))
        failed |= row["5xx"] > 0 or row["refused"] != row["counted"]
    print("\n## faults")
    for row in fault_rows:
        print(json.dumps(row))
        failed |= row["lost"] > 0 or row["duplicates counted"] < row["duplicates observed"]
    print("\n## floods")
    print(json.dumps(flood))
    failed |= flood["other client served (of 10)"] < 10 or flood["slowloris closed by the deadline"] < 20
    print("\n## memory")
    print(json.dumps({"rss_mb_before": rss_before, "rss_mb_after": rss_after}))
    print("\ncampaign:", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
