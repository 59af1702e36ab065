"""Data drift per (model, feature): the two-sample Kolmogorov-Smirnov statistic between a reference
window (the first values seen) and a sliding window of the most recent values."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

__all__ = ["DriftTracker", "ks_statistic"]


def ks_statistic(reference: list[float], current: list[float]) -> float:
    """max |F_ref(x) - F_cur(x)| over all observed x; 0 (same) .. 1 (disjoint)."""
    if not reference or not current:
        return 0.0
    ref = sorted(reference)
    cur = sorted(current)
    n, m = len(ref), len(cur)
    best = 0.0
    for x in ref + cur:
        gap = abs(bisect_right(ref, x) / n - bisect_right(cur, x) / m)
        best = max(best, gap)
    return best


class _Feature:
    __slots__ = ("recent", "reference")

    def __init__(self, window: int) -> None:
        self.reference: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)


class DriftTracker:
    """Keeps at most ``max_series`` (model, feature) pairs; further pairs are not tracked."""

    def __init__(self, window: int = 500, max_series: int = 200) -> None:
        self._window = window
        self._max_series = max_series
        self._features: dict[tuple[str, str], _Feature] = {}
        self.untracked = 0

    def observe(self, model: str, features: dict[str, float]) -> None:
        for name, value in features.items():
            key = (model, name)
            state = self._features.get(key)
            if state is None:
                if len(self._features) >= self._max_series:
                    self.untracked += 1
                    continue
                state = self._features[key] = _Feature(self._window)
            if len(state.reference) < self._window:
                state.reference.append(value)
            else:
                state.recent.append(value)

    def scores(self, min_recent: int = 50) -> dict[tuple[str, str], float]:
        """The drift score of each pair with a full reference and at least ``min_recent`` values."""
        return {
            key: ks_statistic(state.reference, list(state.recent))
            for key, state in self._features.items()
            if len(state.reference) >= self._window and len(state.recent) >= min_recent
        }
