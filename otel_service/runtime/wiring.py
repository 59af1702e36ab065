"""Wiring of the intake side, the same for both intake roles (the first process and the others).

The export side is wired in ``export_host`` (it runs in its own process); ``app.create_app`` and
``intake_group.run_intake_process`` call ``wire_intake``. Nothing outside ``runtime`` wires components.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ..config import Settings
from ..intake.accept import Intake, IntakeStats
from ..intake.connections import ConnectionLimits
from ..intake.handlers import Service
from ..spool import SpoolWriter
from ..spool.commit import GroupCommit
from ..spool.shards import shard_dir, shard_dirs
from ..telemetry.aggregates import Aggregates
from ..telemetry.instruments import IntakeInstruments

__all__ = ["connection_limits", "intake_spools", "wire_intake"]


def intake_spools(settings: Settings) -> list[Path]:
    """The spools an intake process counts against the bound: the main one first, then every shard
    (of this run's intake processes, and any an earlier run with more of them left)."""
    others = (shard_dir(settings.spool_dir, index) for index in range(1, settings.intake_processes))
    return [settings.spool_dir, *sorted({*shard_dirs(settings.spool_dir), *others})]


def connection_limits(settings: Settings) -> ConnectionLimits:
    """What each intake process's server allows a connection."""
    return ConnectionLimits(
        max_connections=settings.max_connections,
        max_per_client=settings.max_connections_per_client,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
    )


def wire_intake(
    settings: Settings,
    writer: SpoolWriter,
    *,
    aggregates: Aggregates,
    stats: IntakeStats | None = None,
    received: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    rejected: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    shards: Callable[[], Mapping[str, int]] = dict,
    counted_since: int | None = None,
) -> Service:
    """One intake process's endpoints over ``writer``: validation, the bounded spool, the fsync
    policy and the intake metrics (observed from ``received``/``rejected``: by default this process's
    own counts; the first process passes everyone's)."""
    intake = Intake(
        writer,
        max_spool_bytes=settings.spool_max_bytes,
        max_spool_age=settings.spool_max_age,
        stats_=stats,
        spools=intake_spools(settings),
    )
    counts = intake.stats
    instruments = IntakeInstruments.create(
        aggregates,
        received=received or (lambda: counts.received),
        rejected=rejected or (lambda: counts.rejected),
        shards=shards,
        counted_since=counted_since,
    )
    commit = GroupCommit(writer.sync) if settings.spool_fsync == "always" else None
    return Service(settings, intake, instruments, aggregates, commit=commit)
