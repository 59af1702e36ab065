"""Explicit-bucket histograms aggregated in-process (``aggregates.Aggregates`` holds them), exported
through the SDK's metric readers.

The SDK spends ~20 µs per ``Histogram.record`` (attribute cleaning and hashing per measurement); at
several histograms per event that is most of the export path's CPU. These histograms aggregate in a
dict keyed by attribute tuple (~1 µs per observation), keep the SDK's semantics (cumulative, bucket
``i`` counts values in ``(bounds[i-1], bounds[i]]``, one exemplar per bucket, a cardinality cap with an
``otel.metric.overflow`` series), and hand their points to the reader as SDK ``Metric`` objects, so
Prometheus and OTLP render them like any other metric.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)

from .cardinality import OVERFLOW_VALUE

__all__ = ["OVERFLOW_KEY", "FastHistogram", "Key", "fold_keys"]

_T = TypeVar("_T")

#: An attribute set as its items tuple.
Key = tuple[tuple[str, Any], ...]
#: The one series that stands for every attribute set beyond the cardinality cap.
OVERFLOW_KEY: Key = (("otel.metric.overflow", True),)


class _Point:
    __slots__ = ("count", "counts", "exemplars", "max", "min", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        #: Per bucket, the latest (value, time, trace_id, span_id) offered with trace context.
        self.exemplars: list[tuple[float, int, str, str] | None] = [None] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def dump(self) -> list[Any]:
        return [self.counts, self.count, self.sum, self.min, self.max]

    @classmethod
    def load(cls, dumped: Sequence[Any]) -> _Point:
        counts, count, total, low, high = dumped
        point = cls(len(counts))
        point.counts = [int(c) for c in counts]
        point.count, point.sum, point.min, point.max = int(count), float(total), float(low), float(high)
        return point

    def plus(self, other: _Point) -> _Point:
        """A new point counting both (exemplars are this one's)."""
        both = _Point(len(self.counts))
        both.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        both.exemplars = list(self.exemplars)
        both.count = self.count + other.count
        both.sum = self.sum + other.sum
        both.min = min(self.min, other.min)
        both.max = max(self.max, other.max)
        return both


def _loaded(dumped: Sequence[Any]) -> Iterator[tuple[Key, _Point]]:
    for key, point in dumped:
        yield tuple((str(name), value) for name, value in key), _Point.load(point)


def fold_keys(
    points: dict[Key, _T], attributes: frozenset[str], values: frozenset[str]
) -> list[tuple[Key, _T]]:
    """Remove from ``points`` the series whose ``attributes`` hold one of ``values``; each, with its
    key as it reads with ``_OTHER`` in their place."""
    found = [key for key in points if any(name in attributes and value in values for name, value in key)]
    return [
        (
            tuple(
                (name, OVERFLOW_VALUE if name in attributes and value in values else value)
                for name, value in key
            ),
            points.pop(key),
        )
        for key in found
    ]


class FastHistogram:
    """One histogram instrument. Not thread-safe: its ``Aggregates`` lock guards record and read."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float], limit: int) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(float(b) for b in bounds)
        self._limit = limit
        self._points: dict[Key, _Point] = {}
        #: Observations folded into the overflow series because the cardinality cap was reached.
        self.overflowed = 0
        #: Where the same histogram of other processes is read (their ``dump()``), summed into ours
        #: at collection time: one series per attribute set however many processes recorded it.
        self.peers: Callable[[], Sequence[Sequence[Any]]] | None = None

    def dump(self) -> list[Any]:
        """The histogram's cumulative state as JSON-ready lists (no exemplars)."""
        return [[[list(pair) for pair in key], p.dump()] for key, p in self._points.items()]

    def restore(self, dumped: Sequence[Any]) -> None:
        """Continue from a ``dump()`` (a restarted process carrying on its predecessor's counts)."""
        self._points = dict(_loaded(dumped))

    def fold(self, attributes: frozenset[str], values: frozenset[str]) -> None:
        """Merge every series whose ``attributes`` hold one of ``values`` into the series with
        ``_OTHER`` there instead (values aged out of a label guard: totals stay whole)."""
        for key, point in fold_keys(self._points, attributes, values):
            other = self._points.get(key)
            self._points[key] = point if other is None else other.plus(point)

    def _merged_points(self) -> dict[Key, _Point]:
        if self.peers is None:
            return self._points
        points = dict(self._points)
        for dumped in self.peers():
            for key, point in _loaded(dumped):
                mine = points.get(key)
                points[key] = point if mine is None else mine.plus(point)
        return points

    def record(
        self,
        value: float,
        attributes: Mapping[str, Any],
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        self.record_key(tuple(attributes.items()), value, trace_id, span_id)

    def record_key(
        self,
        key: Key,
        value: float,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        """``record`` with the attributes given as their items tuple (callers that keep it)."""
        point = self._points.get(key)
        if point is None:
            if len(self._points) >= self._limit - 1:
                self.overflowed += 1
                key = OVERFLOW_KEY
                point = self._points.get(key)
            if point is None:
                point = self._points[key] = _Point(len(self.bounds) + 1)
        index = bisect_left(self.bounds, value)
        point.counts[index] += 1
        point.count += 1
        point.sum += value
        if value < point.min:
            point.min = value
        if value > point.max:
            point.max = value
        if trace_id is not None and span_id is not None:
            point.exemplars[index] = (value, time.time_ns(), trace_id, span_id)

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        merged = self._merged_points()
        if not merged:
            return None
        points = [
            HistogramDataPoint(
                attributes=dict(key),
                start_time_unix_nano=start_ns,
                time_unix_nano=now_ns,
                count=p.count,
                sum=p.sum,
                bucket_counts=list(p.counts),
                explicit_bounds=self.bounds,
                min=p.min,
                max=p.max,
                exemplars=[
                    Exemplar({}, e[0], e[1], span_id=int(e[3], 16), trace_id=int(e[2], 16))
                    for e in p.exemplars
                    if e is not None
                ],
            )
            for key, p in merged.items()
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )
