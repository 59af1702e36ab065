"""Request bodies: content type and encoding checks, a bounded read with a deadline, bounded inflation."""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import HttpVersion11, StreamReader, web

from ..model.errors import ExpectationFailed, InvalidEvent, PayloadTooLarge, UnsupportedMediaType

__all__ = ["BATCH_TYPES", "JSON_TYPES", "read_body"]

JSON_TYPES = frozenset({"application/json"})
BATCH_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl"})
#: zlib ``wbits`` per accepted Content-Encoding (None: as is).
_DECODERS: dict[str, int | None] = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_BODY_DEADLINE = 10.0


async def read_body(request: web.BaseRequest, allowed: frozenset[str], limit: int) -> bytes:
    """The request body, checked (type, charset, encoding, size after decompression, read deadline)."""
    if request.content_type not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {sorted(allowed)}, got {request.content_type!r}",
            field="Content-Type",
        )
    if request.charset not in (None, "utf-8", "UTF-8"):
        raise UnsupportedMediaType("only UTF-8 bodies are accepted", field="Content-Type")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", field="$")
    encoding = request.headers.get("Content-Encoding")
    encoding = "identity" if encoding is None else encoding.strip().lower()
    if encoding not in _DECODERS:
        raise UnsupportedMediaType(
            f"Content-Encoding must be one of {sorted(_DECODERS)}, got {encoding!r}",
            field="Content-Encoding",
        )
    try:
        if request.content.is_eof():  # the usual small body arrived with the headers: take it
            raw = request.content.read_nowait()
        else:
            await _continue(request)
            async with asyncio.timeout(_BODY_DEADLINE):
                raw = await _read_bounded(request.content, limit)
    except TimeoutError:
        raise InvalidEvent(
            f"body not received within {_BODY_DEADLINE:.0f} s", field="$", reason="body_timeout"
        ) from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", field="$")
    body = _decompress(raw, encoding, limit)
    if not body:
        raise InvalidEvent("empty body", field="$", reason="empty_body")
    return body


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` once the headers passed every check (curl sends it before
    large bodies and waits for it): the client sends the body only then."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != HttpVersion11:
        return
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed(f"only 100-continue is supported, got {expect!r}", field="Expect")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper starts after this interim one


async def _read_bounded(stream: StreamReader, limit: int) -> bytes:
    """The body as it arrives; stops reading once it exceeds ``limit`` (the caller refuses it)."""
    chunks = []
    size = 0
    while size <= limit and (chunk := await stream.readany()):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """Inflate ``raw``; refuse output beyond ``limit`` (decompression bombs) and corrupt data."""
    wbits = _DECODERS[encoding]
    if wbits is None:
        return raw
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
        if len(body) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"body exceeds {limit} bytes after decompression", field="$")
        if not inflater.eof:
            raise InvalidEvent(f"truncated {encoding} body", field="$", reason="corrupt_body")
    except zlib.error as exc:
        raise InvalidEvent(f"corrupt {encoding} body: {exc}", field="$", reason="corrupt_body") from None
    return body
