"""The ``otel-service`` command: ``serve`` the sidecar, ``send`` events to one, ``--version``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .config import ENVIRONMENT, Settings, SettingsError
from .runtime.app import App, CannotListen, create_app, serve
from .runtime.export_host import ExportRunner, ProcessRunner, ThreadRunner, build_worker
from .runtime.server import configure_diagnostics, new_event_loop
from .spool.segments import SpoolLocked
from .telemetry.providers import create_metrics, create_resource, new_instance_id

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-service",
        description="Telemetry sidecar for AI/ML apps: JSON events in, OpenTelemetry out.",
        epilog="Environment variables:\n"
        + "\n".join(f"  {name}: {text}" for name, text in ENVIRONMENT.items()),
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


async def _serve_until_signalled(app: App) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(app, stop)


def _serve(settings: Settings) -> int:
    configure_diagnostics(settings.log_level)
    instance_id = new_instance_id()
    resource = create_resource(settings, instance_id)
    intake_metrics = create_metrics(settings, resource, scope="otel_service.intake", target_info=False)
    runner: ExportRunner
    if settings.export_mode == "thread":
        runner = ThreadRunner(build_worker(settings, resource))
    else:
        runner = ProcessRunner(settings, instance_id)
    try:
        app = create_app(settings, runner=runner, metrics=intake_metrics)
    except SpoolLocked as exc:
        print(f"otel-service: {exc}", file=sys.stderr)
        return 2
    print(
        f"otel-service {__version__} listening on http://{settings.host}:{settings.port} "
        f"(export: {settings.otlp_endpoint or 'embedded default, no OTLP'})",
        file=sys.stderr,
        flush=True,
    )
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as loop_runner:
            loop_runner.run(_serve_until_signalled(app))
    except CannotListen as exc:
        print(f"otel-service: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
    return 0


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
        print(f"otel-service: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings)
    return _send(args, settings)


if __name__ == "__main__":
    sys.exit(main())
