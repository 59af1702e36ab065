"""The service's cumulative metrics, aggregated in-process: counters and explicit-bucket histograms of
one instrumentation scope, behind one lock, with one start time.

Their whole state is plain data (``dump``/``restore``), so the export side can persist it with the
spool position it covers and carry on after a restart, kill -9 included, under the same series
identity (``start_ns`` comes from the spool's identity): the collector and Prometheus see one
continuous series whose total is exact. Counters cost a dict update per attribute set and batch
(the SDK's ``Counter.add`` cleans and hashes attributes on every call); histograms are
``FastHistogram`` s. Both keep the SDK's semantics: cumulative, a cardinality cap with one
``otel.metric.overflow`` series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .histograms import OVERFLOW_KEY, FastHistogram, Key, fold_keys

__all__ = ["Aggregates", "FastCounter"]


class FastCounter:
    """One monotonic counter. ``add`` takes the set's lock; ``add_key`` is for callers holding it."""

    def __init__(self, name: str, unit: str, description: str, limit: int, lock: threading.RLock) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._limit = limit
        self._lock = lock
        self._points: dict[Key, int | float] = {}
        #: Additions folded into the overflow series because the cardinality cap was reached.
        self.overflowed = 0

    def add(self, amount: int | float, attributes: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self.add_key(tuple(attributes.items()) if attributes else (), amount)

    def add_key(self, key: Key, amount: int | float) -> None:
        points = self._points
        if key not in points:
            if len(points) >= self._limit - 1:
                self.overflowed += 1
                key = OVERFLOW_KEY
            points.setdefault(key, 0)
        points[key] += amount

    def fold(self, attributes: frozenset[str], values: frozenset[str]) -> None:
        """Merge every series whose ``attributes`` hold one of ``values`` into its ``_OTHER`` series."""
        for key, total in fold_keys(self._points, attributes, values):
            self._points[key] = self._points.get(key, 0) + total

    def value(self, attributes: Mapping[str, Any] | None = None) -> int | float:
        """The total of one attribute set (tests, diagnostics)."""
        with self._lock:
            return self._points.get(tuple(attributes.items()) if attributes else (), 0)

    def dump(self) -> list[Any]:
        return [[[list(pair) for pair in key], total] for key, total in self._points.items()]

    def restore(self, dumped: Sequence[Any]) -> None:
        self._points = {tuple((str(n), v) for n, v in key): total for key, total in dumped}

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        return _sum_metric(self.name, self.unit, self.description, self._points, start_ns, now_ns)


def _sum_metric(
    name: str, unit: str, description: str, points: Mapping[Key, int | float], start_ns: int, now_ns: int
) -> Metric | None:
    if not points:
        return None
    data = [
        NumberDataPoint(
            attributes=dict(key), start_time_unix_nano=start_ns, time_unix_nano=now_ns, value=value
        )
        for key, value in points.items()
    ]
    return Metric(
        name=name,
        description=description,
        unit=unit,
        data=Sum(
            data_points=data,
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
            is_monotonic=True,
        ),
    )


class _Observed:
    """A counter whose totals something else keeps (``source()``: label values -> total)."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        labels: tuple[str, ...],
        source: Callable[[], Mapping[tuple[Any, ...], int | float]],
        start_ns: int | None,
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._labels = labels
        self._source = source
        self._start_ns = start_ns

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        start_ns = start_ns if self._start_ns is None else self._start_ns
        points = {tuple(zip(self._labels, key, strict=True)): value for key, value in self._source().items()}
        return _sum_metric(self.name, self.unit, self.description, points, start_ns, now_ns)


class Aggregates:
    """The counters and histograms of one instrumentation scope, the lock that guards them, and the
    start time of their series."""

    def __init__(
        self, scope: str, version: str, cardinality_limit: int, *, start_ns: int | None = None
    ) -> None:
        self.scope = InstrumentationScope(scope, version)
        self.lock = threading.RLock()
        self._limit = cardinality_limit
        self._histograms: dict[str, FastHistogram] = {}
        self._counters: dict[str, FastCounter] = {}
        self._observed: list[_Observed] = []
        self._kept: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        #: Start of every series: the spool's, so a restarted process continues the same series.
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.observe_counter(
            "otel_service.metric.overflow",
            ("metric",),
            lambda: {(name,): n for name, n in self.overflowed().items()},
            unit="{measurement}",
            description="Measurements folded into an otel_metric_overflow series (cardinality cap).",
        )

    def histogram(self, name: str, *, unit: str, description: str, bounds: Sequence[float]) -> FastHistogram:
        histogram = self._histograms[name] = FastHistogram(name, unit, description, bounds, self._limit)
        return histogram

    def counter(self, name: str, *, unit: str, description: str) -> FastCounter:
        counter = self._counters[name] = FastCounter(name, unit, description, self._limit, self.lock)
        return counter

    def observe_counter(
        self,
        name: str,
        labels: tuple[str, ...],
        source: Callable[[], Mapping[tuple[Any, ...], int | float]],
        *,
        unit: str,
        description: str,
        start_ns: int | None = None,
    ) -> None:
        """A cumulative counter read from ``source()`` at collection time, whose series start at
        ``start_ns`` (default: this set's start)."""
        self._observed.append(_Observed(name, unit, description, labels, source, start_ns))

    def keep(self, name: str, dump: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        """State that must carry on with the totals (which label values the guards admitted): saved
        in ``dump()`` under ``name`` and handed to ``restore`` by ``restore()``."""
        self._kept[name] = (dump, restore)

    def overflowed(self) -> dict[str, int]:
        """Measurements folded into overflow series, per instrument (cardinality cap reached)."""
        both: list[FastHistogram | FastCounter] = [*self._histograms.values(), *self._counters.values()]
        return {i.name: i.overflowed for i in both if i.overflowed}

    def dump(self) -> dict[str, Any]:
        """Every total as JSON-ready data. The caller holds ``lock`` (to pair it with a position)."""
        return {
            "counters": {name: c.dump() for name, c in self._counters.items()},
            "histograms": {name: h.dump() for name, h in self._histograms.items()},
            "overflowed": self.overflowed(),
            "kept": {name: dump() for name, (dump, _) in self._kept.items()},
        }

    def restore(self, dumped: Mapping[str, Any]) -> None:
        """Continue from a ``dump()``; instruments it does not name start at zero."""
        with self.lock:
            overflowed = dumped.get("overflowed", {})
            for kind, instruments in (("counters", self._counters), ("histograms", self._histograms)):
                for name, points in dumped.get(kind, {}).items():
                    instrument = instruments.get(name)
                    if instrument is not None:
                        instrument.restore(points)
                        instrument.overflowed = int(overflowed.get(name, 0))
            for name, state in dumped.get("kept", {}).items():
                if name in self._kept:
                    self._kept[name][1](state)

    def scope_metrics(self) -> ScopeMetrics | None:
        """Every cumulative point now, as the SDK's data model."""
        now = time.time_ns()
        with self.lock:
            instruments: list[FastCounter | _Observed | FastHistogram] = [
                *self._counters.values(),
                *self._observed,
                *self._histograms.values(),
            ]
            metrics = [m for i in instruments if (m := i.metric(self.start_ns, now)) is not None]
        if not metrics:
            return None
        return ScopeMetrics(scope=self.scope, metrics=metrics, schema_url="")
