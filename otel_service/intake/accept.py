"""Intake: resolve each accepted event's IDs and times, and append it to the spool.

Once ``accept`` returns, the events are owned by the service (the delivery promise behind 202).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..model.context import RequestContext, new_span_id
from ..model.errors import Unavailable
from ..model.events import KIND_OF, Event
from ..model.validation import event_seconds
from ..spool import SpoolWriter, first_pending, usage
from ..spool.record import Envelope, decode_envelope, encode_envelope
from .counts import DurableCounter, open_counts

__all__ = ["Accepted", "Intake", "IntakeStats"]

_STAT_TTL = 0.25
#: What the spool may hold on disk, as a multiple of its bound on undelivered bytes: events already
#: delivered stay until a metric checkpoint covers them (within a second, unless it cannot be saved),
#: so a failing checkpoint fills the disk only so far.
RETAINED_FACTOR = 2
_ENDPOINTS = {"track": "/track", "events": "/v1/events"}


@dataclass(slots=True)
class Accepted:
    """An event the service now owns: its index in the request and the IDs it was given."""

    index: int
    correlation_id: str
    trace_id: str
    span_id: str


@dataclass
class IntakeStats:
    """Plain counters for ``/health/detailed``."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    failed_requests: int = 0
    last_request: float | None = None
    #: Accepted events by (endpoint, kind) and refusals by (endpoint, reason); the intake's event
    #: metrics are observed from these, so the request path only increments a dict.
    received: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def durable(cls, directory: Path, carried: IntakeStats | None = None) -> IntakeStats:
        """Counters whose event counts survive kill -9 and restarts (kept in ``directory``,
        ``counts``); the others carry on from ``carried`` (a predecessor's last published)."""
        received, rejected = open_counts(directory)
        stats = cls(received=received, rejected=rejected)
        if carried is not None:
            stats.requests, stats.failed_requests = carried.requests, carried.failed_requests
            stats.last_request = carried.last_request
        return stats

    def close(self) -> None:
        """Stop writing the durable counts (at exit; counting goes on in memory)."""
        if isinstance(self.received, DurableCounter):
            self.received.file.close()

    def reject(self, path: str, reason: str) -> None:
        """Count one refused event or request: the one place rejections are counted."""
        self.rejected[path, reason] += 1

    def accepted_by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, kind), n in self.received.items():
            out[kind] += n
        return dict(out)

    def rejected_by_reason(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, reason), n in self.rejected.items():
            out[reason] += n
        return dict(out)

    def dump(self) -> dict[str, Any]:
        """The counters as JSON-ready data (what an intake process publishes to the others)."""
        return {
            "started": self.started,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "last_request": self.last_request,
            "received": [[*key, n] for key, n in self.received.items()],
            "rejected": [[*key, n] for key, n in self.rejected.items()],
        }

    @classmethod
    def load(cls, dumped: Mapping[str, Any]) -> IntakeStats:
        return cls(
            started=float(dumped["started"]),
            requests=int(dumped["requests"]),
            failed_requests=int(dumped["failed_requests"]),
            last_request=dumped["last_request"],
            received=Counter({(str(a), str(b)): int(n) for a, b, n in dumped["received"]}),
            rejected=Counter({(str(a), str(b)): int(n) for a, b, n in dumped["rejected"]}),
        )

    def plus(self, other: IntakeStats) -> IntakeStats:
        """Both processes' counts together (started: this one's)."""
        lasts = [t for t in (self.last_request, other.last_request) if t is not None]
        return IntakeStats(
            started=self.started,
            requests=self.requests + other.requests,
            failed_requests=self.failed_requests + other.failed_requests,
            last_request=max(lasts) if lasts else None,
            received=self.received + other.received,
            rejected=self.rejected + other.rejected,
        )


class Intake:
    def __init__(
        self,
        writer: SpoolWriter,
        *,
        max_spool_bytes: int,
        max_spool_age: float = 0.0,
        stats_: IntakeStats | None = None,
        spools: Sequence[Path] = (),
    ) -> None:
        self._writer = writer
        #: Spools whose undelivered bytes count against the bound: by default the writer's own; with
        #: several intake processes, the main spool first (the export side's, where the oldest event
        #: waits), then every intake process's shard.
        self._spools = list(spools) or [writer.directory]
        self._max_bytes = max_spool_bytes
        self._max_age = max_spool_age
        self._oldest_age = 0.0
        self.stats = stats_ or IntakeStats()
        #: Bytes not delivered yet (the bound), and all the spools hold (at most RETAINED_FACTOR x).
        self._undelivered = 0
        self._retained = 0
        self._checked = 0.0
        self.closed = False

    def undelivered_bytes(self) -> int:
        """Bytes not delivered yet (re-measured at most every 250 ms; appends counted meanwhile)."""
        self._refresh()
        return self._undelivered

    def oldest_age(self) -> float:
        """Seconds the oldest undelivered event has waited (re-measured at most every 250 ms)."""
        self._refresh()
        return self._oldest_age

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked <= _STAT_TTL:
            return
        self._checked = now
        measured = [usage(directory) for directory in self._spools]
        self._retained = sum(held.bytes for held, _ in measured)
        self._undelivered = sum(pending for _, pending in measured)
        self._oldest_age = 0.0
        if self._max_age and self._undelivered:
            first = first_pending(self._spools[0])
            if first is not None:
                try:
                    received = decode_envelope(first).received_ns
                except (msgspec.DecodeError, msgspec.ValidationError):
                    return
                self._oldest_age = max(0.0, time.time() - received / 1e9)

    @property
    def fill_ratio(self) -> float:
        """How full the spool is: undelivered bytes against the bound, or what it retains on disk
        against its ceiling, whichever is fuller."""
        undelivered = self.undelivered_bytes()
        return max(undelivered / self._max_bytes, self._retained / (RETAINED_FACTOR * self._max_bytes))

    def accept(
        self, items: Sequence[tuple[int, Event]], *, source: str, request: RequestContext
    ) -> list[Accepted]:
        """Spool ``items`` (index, event); raise ``Unavailable`` when closed or at the bound."""
        if self.closed:
            raise Unavailable("shutting down", reason="shutting_down", retry_after=5)
        if self.fill_ratio >= 1:
            raise Unavailable("the export spool is full; retry later", reason="spool_full", retry_after=10)
        if self._max_age and self._oldest_age >= self._max_age:
            raise Unavailable(
                f"undelivered events are older than {self._max_age:.0f} s; retry later",
                reason="spool_too_old",
                retry_after=30,
            )
        now = time.time()
        received_ns = time.time_ns()
        accepted: list[Accepted] = []
        payloads: list[bytes] = []
        received = self.stats.received
        endpoint = _ENDPOINTS[source]
        for index, event in items:
            parent = request.parent_of(event.trace_id, event.span_id)
            trace_id = request.trace_id if parent is None else parent.trace_id
            span_id = new_span_id()
            correlation_id = request.event_correlation_id(event.correlation_id, parent)
            payloads.append(
                encode_envelope(
                    Envelope(
                        event=event,
                        trace_id=trace_id,
                        span_id=span_id,
                        parent_span_id=None if parent is None else parent.span_id,
                        correlation_id=correlation_id,
                        end_ns=int(event_seconds(event, now) * 1e9),  # checked by the parser
                        received_ns=received_ns,
                        source=source,
                        sampled=True if parent is None else parent.sampled,
                        tracestate=None if parent is None else parent.tracestate,
                    )
                )
            )
            accepted.append(Accepted(index, correlation_id, trace_id, span_id))
        if payloads:
            try:
                written = self._writer.append(payloads)
                self._undelivered += written
                self._retained += written
            except OSError as exc:
                raise Unavailable(
                    f"cannot write the export spool: {exc.strerror}",
                    reason="spool_unwritable",
                    retry_after=10,
                ) from None
            kinds: dict[str, int] = {}
            for _, event in items:
                kind = KIND_OF[type(event)]
                kinds[kind] = kinds.get(kind, 0) + 1
            for kind, count in kinds.items():  # one durable write per kind and request
                received[endpoint, kind] += count
        return accepted
