"""Data drift: the two-sample Kolmogorov-Smirnov statistic and the bounded per-feature tracker."""

from __future__ import annotations

import random

import pytest

from otel_service.telemetry.drift import DriftTracker, ks_statistic


def _normal(seed: int, n: int, mu: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mu, 1.0) for _ in range(n)]


@pytest.mark.parametrize(
    ("reference", "current", "expected"),
    [
        pytest.param([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.0, id="identical"),
        pytest.param([3.0, 1.0, 2.0], [2.0, 3.0, 1.0], 0.0, id="same-values-any-order"),
        pytest.param([1.0, 1.0, 2.0, 2.0], [1.0, 2.0], 0.0, id="same-distribution-different-sizes"),
        pytest.param([1.0, 2.0, 3.0], [10.0, 11.0], 1.0, id="disjoint-above"),
        pytest.param([10.0, 11.0], [1.0, 2.0, 3.0], 1.0, id="disjoint-below"),
        pytest.param([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0], 0.5, id="half-overlap"),
        pytest.param([0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], 0.5, id="ties"),
        pytest.param([], [1.0], 0.0, id="empty-reference"),
        pytest.param([1.0], [], 0.0, id="empty-current"),
    ],
)
def test_ks_statistic_known_values(reference: list[float], current: list[float], expected: float) -> None:
    """The statistic is the largest gap between the two empirical CDFs: 0 when equal, 1 when disjoint."""
    assert ks_statistic(reference, current) == pytest.approx(expected)


def test_ks_statistic_is_symmetric() -> None:
    """Swapping the samples does not change the statistic."""
    a, b = _normal(1, 200), _normal(2, 150, mu=0.3)
    assert ks_statistic(a, b) == pytest.approx(ks_statistic(b, a))


def test_ks_statistic_grows_with_the_shift() -> None:
    """Samples from the same normal score low; a shifted normal scores in between; far apart scores ~1."""
    reference = _normal(1, 500)
    same = ks_statistic(reference, _normal(2, 500))
    shifted = ks_statistic(reference, _normal(3, 500, mu=1.0))
    far = ks_statistic(reference, _normal(4, 500, mu=10.0))
    assert 0.0 < same < 0.1
    assert 0.25 < shifted < 0.55  # theory: 2 * Phi(0.5) - 1 = 0.383
    assert same < shifted < far
    assert far == 1.0


def test_tracker_needs_a_full_reference_and_min_recent() -> None:
    """No score until the reference window is full and at least min_recent newer values arrived."""
    tracker = DriftTracker(window=10)
    for value in range(10):
        tracker.observe("m", {"x": float(value)})
    assert tracker.scores(min_recent=3) == {}  # reference full, nothing recent yet
    tracker.observe("m", {"x": 100.0})
    tracker.observe("m", {"x": 101.0})
    assert tracker.scores(min_recent=3) == {}
    tracker.observe("m", {"x": 102.0})
    assert tracker.scores(min_recent=3) == {("m", "x"): 1.0}


def test_tracker_reference_is_the_first_window_and_recent_slides() -> None:
    """The reference keeps the first values; the recent window keeps only the newest ones."""
    tracker = DriftTracker(window=4)
    for value in (1.0, 2.0, 3.0, 4.0):  # reference
        tracker.observe("m", {"x": value})
    for value in (50.0, 60.0, 70.0, 80.0):  # drifted...
        tracker.observe("m", {"x": value})
    assert tracker.scores(min_recent=4) == {("m", "x"): 1.0}
    for value in (1.0, 2.0, 3.0, 4.0):  # ...and back: the drifted values slid out
        tracker.observe("m", {"x": value})
    assert tracker.scores(min_recent=4) == {("m", "x"): 0.0}


def test_tracker_scores_each_model_and_feature_separately() -> None:
    """Series are keyed by (model, feature); one drifting feature does not affect another."""
    tracker = DriftTracker(window=5)
    for i in range(5):
        tracker.observe("a", {"x": float(i), "y": float(i)})
        tracker.observe("b", {"x": float(i)})
    for i in range(5):
        tracker.observe("a", {"x": float(i), "y": float(i + 100)})
        tracker.observe("b", {"x": float(i)})
    assert tracker.scores(min_recent=5) == {("a", "x"): 0.0, ("a", "y"): 1.0, ("b", "x"): 0.0}


def test_tracker_caps_series_and_counts_untracked() -> None:
    """Beyond max_series new (model, feature) pairs are not tracked, and each such value is counted."""
    tracker = DriftTracker(window=1, max_series=2)
    tracker.observe("m", {"a": 1.0, "b": 1.0, "c": 1.0})
    tracker.observe("n", {"a": 1.0})
    tracker.observe("m", {"a": 1.0, "b": 1.0, "c": 1.0})  # a, b known; c still untracked
    assert tracker.untracked == 3
    assert set(tracker.scores(min_recent=1)) == {("m", "a"), ("m", "b")}
