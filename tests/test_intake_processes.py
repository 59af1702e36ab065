"""Several intake processes on one port: shards, published counters, supervision and shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from otel_service.config import Settings, SettingsError
from otel_service.intake.accept import IntakeStats
from otel_service.spool import SpoolReader, SpoolWriter
from otel_service.spool.record import Envelope, decode_envelope, encode_envelope
from otel_service.spool.shards import ShardMerger, shard_dir
from otel_service.telemetry.histograms import FastHistogram
from otel_service.testing import Failure, OtlpReceiver

from .conftest import Sidecar, StartApp, envelope, free_port, run_cli, wait_ready

EVENT = {"kind": "llm_call", "model": "gpt-4o", "duration_ms": 20, "input_tokens": 3, "output_tokens": 4}


def _envelopes(count: int, first: int = 0) -> list[bytes]:
    return [encode_envelope(envelope(n)) for n in range(first, first + count)]


def _spools(tmp_path: Path, records: int) -> tuple[Path, SpoolWriter, SpoolWriter]:
    """The main spool's path, shard 1 holding ``records`` events, and the main spool's writer."""
    spool = tmp_path / "spool"
    shard = SpoolWriter(shard_dir(spool, 1))
    shard.append(_envelopes(records))
    return spool, shard, SpoolWriter(spool)


def _merger(main: SpoolWriter, spool: Path) -> ShardMerger:
    return ShardMerger(main, [shard_dir(spool, 1)])


def _main_records(spool: Path) -> list[Envelope]:
    reader = SpoolReader(spool)
    try:
        payloads, _ = reader.read(10_000)
    finally:
        reader.close()
    return [decode_envelope(p) for p in payloads]


# -- units ----------------------------------------------------------------------------------------


def test_shard_records_are_copied_into_the_main_spool_once(tmp_path: Path) -> None:
    """What a shard holds lands in the main spool once; a second copy finds nothing new."""
    spool, _, main = _spools(tmp_path, 3)
    merger = _merger(main, spool)
    assert merger.copy() == 3
    merger.commit()
    assert merger.copy() == 0
    merger.close()
    assert [e.correlation_id for e in _main_records(spool)] == ["c-0", "c-1", "c-2"]
    assert (merger.copied, merger.duplicates) == (3, 0)


def test_a_copy_cut_short_by_a_crash_is_not_copied_twice(tmp_path: Path) -> None:
    """Appended but not committed when the process died: found in the main spool, not copied again."""
    spool, shard, main = _spools(tmp_path, 2)
    crashed = _merger(main, spool)
    assert crashed.copy() == 2
    crashed.close()  # no commit: the process died between the append and the cursor
    main.append(_envelopes(1, first=10))  # the first process's own events after the copy
    shard.append(_envelopes(1, first=20))
    restarted = _merger(main, spool)
    assert restarted.copy() == 1
    restarted.commit()
    restarted.close()
    assert (restarted.skipped, restarted.duplicates) == (2, 0)
    assert [e.correlation_id for e in _main_records(spool)] == ["c-0", "c-1", "c-10", "c-20"]


def test_a_copy_cut_short_whose_landing_was_consumed_is_copied_again_and_counted(tmp_path: Path) -> None:
    """If the part of the main spool the copy went to is gone, it is copied again, as possible duplicates."""
    spool, _, main = _spools(tmp_path, 2)
    crashed = _merger(main, spool)
    assert crashed.copy() == 2
    crashed.close()
    (shard_dir(spool, 1) / "copying").write_text("0 0")  # a segment the export side deleted
    restarted = _merger(main, spool)
    assert restarted.copy() == 2
    restarted.commit()
    restarted.close()
    assert (restarted.skipped, restarted.duplicates) == (0, 2)
    assert len(_main_records(spool)) == 4  # at least once: the two again


def test_published_counters_round_trip_and_add_up() -> None:
    """IntakeStats survive dump/load, and two processes' counts add up key by key."""
    first = IntakeStats(requests=3, failed_requests=1, last_request=10.0)
    first.received["/v1/events", "llm_call"] += 2
    second = IntakeStats.load(json.loads(json.dumps(first.dump())))
    assert second == first
    second.rejected["/track", "invalid_type"] += 1
    total = first.plus(second)
    assert (total.requests, total.failed_requests, total.last_request) == (6, 2, 10.0)
    assert total.received == {("/v1/events", "llm_call"): 4}
    assert total.rejected == {("/track", "invalid_type"): 1}


def test_histogram_peers_are_summed_into_one_series() -> None:
    """Another process's dump is added to the same attribute set at collection time."""
    own = FastHistogram("d", "s", "", (0.1, 1.0), limit=100)
    other = FastHistogram("d", "s", "", (0.1, 1.0), limit=100)
    own.record(0.05, {"route": "/track"})
    other.record(0.5, {"route": "/track"})
    other.record(2.0, {"route": "/v1/events"})
    own.peers = lambda: [json.loads(json.dumps(other.dump()))]
    metric = own.metric(0, 1)
    assert metric is not None
    points = {p.attributes["route"]: p for p in metric.data.data_points}
    assert (points["/track"].count, list(points["/track"].bucket_counts)) == (2, [1, 1, 0])
    assert (points["/track"].min, points["/track"].max) == (0.05, 0.5)
    assert points["/v1/events"].count == 1
    restored = FastHistogram("d", "s", "", (0.1, 1.0), limit=100)
    restored.restore(json.loads(json.dumps(other.dump())))
    assert restored.dump() == other.dump()


@pytest.mark.parametrize("value", ["0", "33", "two"])
def test_intake_processes_setting_is_bounded(value: str) -> None:
    """OTELSVC_INTAKE_PROCESSES outside 1..32 is refused, naming the variable."""
    with pytest.raises(SettingsError, match="OTELSVC_INTAKE_PROCESSES"):
        Settings.from_env({"OTELSVC_INTAKE_PROCESSES": value})


async def test_shards_left_by_an_earlier_run_are_exported(
    start_app: StartApp, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """Restarted with one intake process, the sidecar still exports what another process's shard holds."""
    leftover = SpoolWriter(shard_dir(tmp_path / "spool", 3))
    leftover.append(_envelopes(4))
    leftover.close()
    app = await start_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
    assert receiver.wait_for_spans(4, timeout=20)
    assert {s.trace_id.hex() for s in receiver.spans()} == {f"{n:032x}" for n in range(1, 5)}
    assert app.caught_up()


# -- the command with several intake processes ---------------------------------------------------


def _post_each_on_a_new_connection(sidecar: Sidecar, count: int) -> None:
    for _ in range(count):  # urllib opens a connection per request: the kernel spreads them
        assert sidecar.post("/v1/events", EVENT)[0] == 202


def _detailed(sidecar: Sidecar) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sidecar.get("/health/detailed"))
    return data


def _until(check: Callable[[], bool], timeout: float = 20) -> None:
    """Poll ``check``; a connection reset (one that reached a process as it was killed) counts as no."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ConnectionError:
            pass
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _received_total(sidecar: Sidecar) -> float:
    for line in sidecar.get("/metrics").decode().splitlines():
        if line.startswith("otel_service_events_received_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def grouped(serve: Callable[..., Sidecar], receiver: OtlpReceiver) -> Sidecar:
    return serve(
        OTELSVC_INTAKE_PROCESSES="3",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )


def test_intake_processes_share_the_port_and_every_event_is_delivered(
    grouped: Sidecar, receiver: OtlpReceiver
) -> None:
    """Three processes take connections on one port; counts are summed; every span arrives."""
    _post_each_on_a_new_connection(grouped, 90)
    assert receiver.wait_for_spans(90, timeout=30)
    time.sleep(0.6)  # the others publish their counts every 0.25 s
    detailed = _detailed(grouped)
    processes = detailed["intake_processes"]
    assert [p["index"] for p in processes] == [0, 1, 2]
    assert all(p["alive"] and p["requests"] > 0 for p in processes), [p["requests"] for p in processes]
    assert detailed["events"]["accepted"] == {"llm_call": 90}
    assert detailed["export"]["dropped"] == {}
    scrapes = [_received_total(grouped) for _ in range(6)]  # answered by whichever process
    assert scrapes == [90.0] * 6


def test_a_killed_intake_process_is_replaced_and_nothing_is_lost(
    grouped: Sidecar, receiver: OtlpReceiver
) -> None:
    """kill -9 of another intake process right after it answered: not one count lost, all spans arrive."""
    _post_each_on_a_new_connection(grouped, 30)
    victim = _detailed(grouped)["intake_processes"][1]["pid"]
    os.kill(victim, signal.SIGKILL)  # at once: before it could have published anything
    # Read from the processes' count files, not a publication. A read that reached the killed
    # process's socket is reset and asked again; no read may show fewer than 30.
    totals: list[float] = []
    _until(lambda: totals.append(_received_total(grouped)) is None)
    assert totals == [30]
    _until(lambda: _detailed(grouped)["intake_processes"][1]["restarts"] == 1)
    _until(lambda: _detailed(grouped)["intake_processes"][1]["alive"])
    assert _received_total(grouped) == 30
    _post_each_on_a_new_connection(grouped, 30)
    assert receiver.wait_for_spans(60, timeout=30)
    assert _received_total(grouped) == 60
    assert _detailed(grouped)["intake_processes"][1]["pid"] != victim


def test_sigterm_stops_every_intake_process_and_delivers_everything(
    grouped: Sidecar, receiver: OtlpReceiver
) -> None:
    """SIGTERM to the first process: every intake process exits, all spans are delivered, exit 0."""
    _post_each_on_a_new_connection(grouped, 45)
    pids = [p["pid"] for p in _detailed(grouped)["intake_processes"][1:]]
    grouped.process.send_signal(signal.SIGTERM)
    _, err = grouped.process.communicate(timeout=60)
    assert grouped.process.returncode == 0, err.decode()
    assert receiver.counts["traces"] == 45
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


def test_intake_processes_exit_when_the_first_is_killed_and_a_restart_delivers(
    grouped: Sidecar, receiver: OtlpReceiver, sidecar_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 of the first process: the others exit on their own; a restart delivers their shards."""
    receiver.fail(Failure(count=10**9))  # nothing leaves: the events are in the spool and shards
    _post_each_on_a_new_connection(grouped, 45)
    pids = [p["pid"] for p in _detailed(grouped)["intake_processes"][1:]]
    grouped.process.kill()
    grouped.process.communicate(timeout=30)
    _until(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=15)
    receiver.heal()
    port = free_port()
    env = {**sidecar_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    restarted = run_cli("serve", "--port", str(port), env=env)
    try:
        wait_ready(port)
        assert receiver.wait_for_spans(45, timeout=30)
        assert len({s.span_id for s in receiver.spans()}) == 45
    finally:
        restarted.terminate()
        restarted.communicate(timeout=60)


def test_a_restart_right_after_kill_9_waits_for_the_orphaned_intake_processes(
    serve: Callable[..., Sidecar], receiver: OtlpReceiver, sidecar_env: dict[str, str]
) -> None:
    """kill -9 of the first process, restart at once on its port: it waits for the orphan to let go."""
    env = {
        "OTELSVC_INTAKE_PROCESSES": "2",
        "OTELSVC_SHUTDOWN_TIMEOUT": "10",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    first = serve(**env)
    _post_each_on_a_new_connection(first, 20)
    orphan = _detailed(first)["intake_processes"][1]["pid"]
    os.kill(orphan, signal.SIGSTOP)  # it holds the port and its shard until it runs again
    first.process.kill()
    first.process.wait(timeout=30)  # its children hold its output pipes: no communicate() yet
    restarted = run_cli("serve", "--port", str(first.port), env={**sidecar_env, **env})
    try:
        time.sleep(4)
        assert restarted.poll() is None, restarted.communicate()[1].decode()  # waiting, not refused
        os.kill(orphan, signal.SIGCONT)
        wait_ready(first.port)
        assert receiver.wait_for_spans(20, timeout=30)
        assert len({s.span_id for s in receiver.spans()}) == 20
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGCONT)
        restarted.terminate()
        restarted.communicate(timeout=60)
        first.process.communicate(timeout=30)


def test_several_intake_processes_refuse_a_taken_port(sidecar_env: dict[str, str]) -> None:
    """SO_REUSEPORT never joins another listener, even one with SO_REUSEPORT: exit 2 naming the address."""
    with socket.create_server(("127.0.0.1", 0), reuse_port=True) as taken:
        port = taken.getsockname()[1]
        process = run_cli("serve", "--port", str(port), env={**sidecar_env, "OTELSVC_INTAKE_PROCESSES": "2"})
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err.decode()
    assert f"cannot listen on 127.0.0.1:{port}".encode() in err


def test_status_endpoints_agree_whichever_process_answers(grouped: Sidecar) -> None:
    """/ready and /health/detailed through any process report the first process's view."""
    pids = set()
    for _ in range(12):
        with urllib.request.urlopen(f"http://127.0.0.1:{grouped.port}/health/detailed", timeout=5) as r:
            pids.add(json.loads(r.read())["system"]["process_id"])
        with urllib.request.urlopen(f"http://127.0.0.1:{grouped.port}/ready", timeout=5) as r:
            assert r.status == 200
    assert pids == {grouped.process.pid}


def test_a_failed_append_copies_the_batch_again_later(tmp_path: Path) -> None:
    """The main spool refusing a write (disk full) loses nothing: the next copy takes the same records."""
    spool, _, main = _spools(tmp_path, 2)
    merger = _merger(main, spool)
    real_append = main.append

    def full(payloads: Any) -> int:
        raise OSError(28, "No space left on device")

    main.append = full  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        merger.copy()
    main.append = real_append  # type: ignore[method-assign]
    assert merger.copy() == 2
    merger.commit()
    merger.close()
    assert len(_main_records(spool)) == 2
    assert merger.duplicates == 0
