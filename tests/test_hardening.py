"""Client input measured to cause 5xx, and abusive requests: each a counted JSON 4xx naming the field."""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import StartApp

#: (path, body, status, error, field): the fuzz campaign's reproducers (issue "Hardening", defect 2).
FIVE_HUNDREDS = [
    ("/track", b'{"business_id":"\xff"}', 400, "invalid_encoding", "$"),
    ("/v1/events", b'{"kind":[]}', 400, "invalid_field", "$.kind"),
    ("/v1/events", b'{"kind":{"a":1}}', 400, "invalid_field", "$.kind"),
    ("/v1/events", b'{"a":{"x":1,"x":2},', 400, "malformed_json", "$"),
    ("/v1/events", b'{"a":{"x":1,"x":2},"b":' + b"[" * 100_000, 400, "too_deep", "$"),
    ("/v1/events", b'{"a":{"x":1,"x":2},"b":' + b"1" * 5000 + b"}", 400, "invalid_number", "$"),
    ("/track", b'{"a":{"x":1,"x":2},"b":' + b"1" * 5000 + b"}", 400, "invalid_number", "$"),
]


@pytest.mark.parametrize(("path", "body", "status", "error", "field"), FIVE_HUNDREDS)
async def test_input_that_caused_a_500_is_a_counted_4xx(
    start_app: StartApp, path: str, body: bytes, status: int, error: str, field: str
) -> None:
    """Each reproducer: a JSON 4xx with its reason and field, counted; the next valid event is accepted."""
    app = await start_app()
    response = await app.client.post(path, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    if "errors" in answer:  # /v1/events judges each item
        [answer] = answer["errors"]
    assert (response.status, answer["error"], answer["field"]) == (status, error, field)
    detail = await (await app.client.get("/health/detailed")).json()
    assert detail["events"]["rejected"] == {error: 1}


async def test_a_non_utf8_authorization_header_is_a_401(start_app: StartApp) -> None:
    """A token is set and the Authorization header holds a byte that is not UTF-8: 401, not 500."""
    app = await start_app(OTELSVC_AUTH_TOKEN="s3cret")
    reader, writer = await asyncio.open_connection(app.client.host, app.client.port)
    writer.write(
        b"POST /track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer s3\xffcret\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    await writer.drain()
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    answer = json.loads(body)
    assert (head.split(b" ")[1], answer["error"], answer["field"]) == (
        b"401",
        "unauthorized",
        "Authorization",
    )
