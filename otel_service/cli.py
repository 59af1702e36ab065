"""The ``otel-service`` command: ``serve`` the sidecar, ``send`` events to one, ``--version``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .config import Settings, SettingsError, settings_table
from .runtime.app import refuse_settings, run

__all__ = ["main"]

SAMPLE_EVENT = {
    "kind": "llm_call",
    "model": "gemini-1.5-flash",
    "operation": "chat",
    "duration_ms": 1500,
    "input_tokens": 120,
    "output_tokens": 30,
    "business_id": "test-business",
    "conversation_id": "conv-123",
    "session_id": "session-456",
    "intent": "general",
    "response_type": "text",
}


def help_epilog() -> str:
    """The settings table as ``--help`` shows it: every variable, its default and meaning."""
    rows = settings_table()
    width = max(len(name) for name, _, _ in rows)
    lines = [f"  {name:<{width}}  {text} (default: {default})" for name, default, text in rows]
    return "Environment variables (every setting):\n" + "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-service",
        description="Telemetry sidecar for AI/ML apps: JSON events in, OpenTelemetry out.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"otel-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar")
    serve.add_argument("--host", help="address to bind (env OTELSVC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env OTELSVC_PORT, default 5001)")
    send = commands.add_parser("send", help="post events to a running sidecar")
    send.add_argument("file", nargs="?", help="JSON or NDJSON file of events (default: one sample LLM call)")
    send.add_argument("--url", default=None, help="sidecar base URL (default from OTELSVC_PORT)")
    send.add_argument("--token", default=os.environ.get("OTELSVC_AUTH_TOKEN"), help="bearer token")
    send.add_argument("--timeout", type=float, default=5.0)
    return parser


def _send(args: argparse.Namespace, settings: Settings) -> int:
    url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/") + "/v1/events"
    content_type = "application/json"
    if args.file:
        path = Path(args.file)
        body = path.read_bytes()
        if path.suffix in (".ndjson", ".jsonl"):
            content_type = "application/x-ndjson"
    else:
        body = json.dumps(SAMPLE_EVENT).encode()
    headers = {"Content-Type": content_type}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            status, answer, cid = (
                response.status,
                response.read(),
                response.headers.get("X-Correlation-ID"),
            )
    except urllib.error.HTTPError as exc:
        status, answer, cid = exc.code, exc.read(), exc.headers.get("X-Correlation-ID")
    except (urllib.error.URLError, OSError) as exc:
        print(f"otel-service send: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    elapsed = (time.perf_counter() - started) * 1000
    print(f"HTTP {status} in {elapsed:.1f} ms, correlation ID {cid}")
    try:
        print(json.dumps(json.loads(answer), indent=2))
    except ValueError:
        print(answer.decode("utf-8", "replace"))
    return 0 if status < 400 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    if getattr(args, "host", None):
        env["OTELSVC_HOST"] = args.host
    if getattr(args, "port", None) is not None:
        env["OTELSVC_PORT"] = str(args.port)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        if args.command == "serve":
            return refuse_settings(exc)
        print(f"otel-service: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return run(settings)
    return _send(args, settings)


if __name__ == "__main__":
    sys.exit(main())
