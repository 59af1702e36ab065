"""Read-your-writes: /metrics and /health/detailed show every event acknowledged before the read."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from otel_service.intake.fresh import FreshReads
from otel_service.spool import Position, SpoolWriter, end_position

from .conftest import Sidecar

LAB = {"business_id": "acme", "response_time_ms": 850, "tokens_used": 120, "model_name": "gpt-4o"}


def _sample(text: bytes, name: str) -> float:
    """The sum of a metric's samples in Prometheus text (0 if absent)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith((name + "{", name + " "))
    )


def test_metrics_read_right_after_track_show_every_event(serve: Callable[..., Sidecar]) -> None:
    """/track then /metrics at once, 30 times over two intake processes: each read counts them all."""
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="2")
    for n in range(1, 31):
        status, _ = sidecar.post("/track", LAB)
        assert status < 300
        text = sidecar.get("/metrics")
        assert _sample(text, "ai_requests_total") == n
        assert _sample(text, "otel_service_status_stale_reads_total") == 0


def test_detailed_health_right_after_events_shows_them_processed(serve: Callable[..., Sidecar]) -> None:
    """/health/detailed read at once after a batch reports every event of it processed by export."""
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="1")
    event = {"kind": "llm_call", "model": "m", "duration_ms": 3}
    for n in range(1, 11):
        assert sidecar.post("/v1/events", [event] * 5)[0] == 202
        assert json.loads(sidecar.get("/health/detailed"))["export"]["processed"] == 5 * n


async def test_a_read_gives_up_after_the_bound_and_is_counted_stale(tmp_path: Path) -> None:
    """Export behind and not moving: the read waits the bound out, then answers and counts it stale."""
    SpoolWriter(tmp_path).append([b"x"])
    stale: list[str] = []

    async def recorded() -> Position | None:
        return Position(0, 0)

    fresh = FreshReads(
        tmp_path, [], copied_to=lambda _: Position(0, 0), recorded=recorded, stale=stale.append, timeout=0.3
    )
    started = time.monotonic()
    assert not await fresh.wait("/metrics")
    assert time.monotonic() - started >= 0.3
    assert stale == ["/metrics"]


async def test_a_read_waits_for_the_shards_to_be_copied_first(tmp_path: Path) -> None:
    """An event acknowledged by another intake process counts once its shard is copied and recorded."""
    main, shard = tmp_path / "main", tmp_path / "intake-1"
    SpoolWriter(shard).append([b"x"])
    writer = SpoolWriter(main)
    copied = {"to": Position(0, 0)}
    stale: list[str] = []

    async def recorded() -> Position | None:
        return end_position(main)

    async def copy_later() -> None:
        await asyncio.sleep(0.1)
        writer.append([b"x"])
        copied["to"] = end_position(shard)

    fresh = FreshReads(
        main, [shard], copied_to=lambda _: copied["to"], recorded=recorded, stale=stale.append, timeout=2.0
    )
    task = asyncio.create_task(copy_later())
    assert await fresh.wait("/metrics")
    await task
    assert end_position(main) > Position(0, 0)
    assert stale == []


def test_analytics_read_right_after_track_show_every_event(serve: Callable[..., Sidecar]) -> None:
    """/track then the lab's /analytics URL at once, 20 times over two intake processes: all counted."""
    sidecar = serve(OTELSVC_INTAKE_PROCESSES="2")
    for n in range(1, 21):
        assert sidecar.post("/track", LAB)[0] < 300
        assert json.loads(sidecar.get("/analytics/acme"))["requests"]["total"] == n
