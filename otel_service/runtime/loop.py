"""Running aiohttp's low-level server: its options, the event loop, listening."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

__all__ = [
    "SERVER_OPTIONS",
    "CannotListen",
    "listen",
    "new_event_loop",
]

#: Options of aiohttp's server: bodies are decompressed by the handlers (with a bound on the output),
#: and request lines and headers are bounded.
SERVER_OPTIONS: dict[str, Any] = {
    "auto_decompress": False,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
}


class CannotListen(RuntimeError):
    """The configured address is taken or not ours to bind."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available (about 15 % more requests per core), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _refuse_if_taken(host: str, port: int) -> None:
    """Bind ``host:port`` without SO_REUSEPORT, then let go: fails if anything listens there, so two
    sidecars never share a port by accident."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


async def listen(
    runner: web.BaseRunner, host: str, port: int, *, shared: bool = False, first: bool = True
) -> int:
    """Serve ``runner`` on ``host:port``; returns the port bound. ``shared``: with SO_REUSEPORT, for
    other intake processes to bind too; the ``first`` of them checks that nothing else listens there."""
    try:
        if shared and first:
            _refuse_if_taken(host, port)
        await web.TCPSite(runner, host, port, reuse_port=shared).start()
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return int(runner.addresses[-1][1])
