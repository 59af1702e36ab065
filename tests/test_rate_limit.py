"""Per-client token buckets, driven by an explicit clock."""

from __future__ import annotations

import pytest

from otel_service.intake.rate_limit import RateLimiter


def test_burst_is_allowed_then_refused_with_the_wait() -> None:
    """A fresh client may take `burst` tokens at once; the next one waits 1/rate seconds."""
    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.take("c", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("c", now=100.0) == pytest.approx(0.5)


def test_default_burst_is_the_rate_and_at_least_one() -> None:
    """Without an explicit burst a client gets `rate` tokens, and never fewer than one."""
    fast = RateLimiter(rate=5.0)
    assert [fast.take("c", now=0.0) for _ in range(6)][-2:] == [0.0, pytest.approx(0.2)]
    slow = RateLimiter(rate=0.5)
    assert slow.take("c", now=0.0) == 0.0
    assert slow.take("c", now=0.0) == pytest.approx(2.0)


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    """Tokens come back at `rate` per second, never beyond the burst."""
    limiter = RateLimiter(rate=2.0, burst=2.0)
    assert [limiter.take("c", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("c", now=0.25) == pytest.approx(0.25)  # half a token back: wait for the other half
    assert limiter.take("c", now=0.5) == 0.0  # a whole token back
    assert limiter.take("c", now=0.5) == pytest.approx(0.5)
    # a long idle period refills only up to the burst
    assert [limiter.take("c", now=1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_refused_takes_do_not_consume() -> None:
    """Hammering while limited does not push the wait further out."""
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.take("c", now=0.0) == 0.0
    waits = [limiter.take("c", now=0.1 * i) for i in range(1, 10)]
    assert waits == pytest.approx([1 - 0.1 * i for i in range(1, 10)])
    assert limiter.take("c", now=1.0) == 0.0


def test_clients_are_independent() -> None:
    """One client exhausting its bucket does not limit another."""
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.take("a", now=0.0) == 0.0
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)
    assert limiter.take("b", now=0.0) == 0.0
    assert limiter.take("b", now=0.0) == pytest.approx(1.0)


def test_client_table_is_bounded_evicting_the_least_recent() -> None:
    """Beyond max_clients the least recently seen client is forgotten (and starts afresh)."""
    limiter = RateLimiter(rate=1.0, burst=1.0, max_clients=2)
    assert limiter.take("a", now=0.0) == 0.0
    assert limiter.take("b", now=0.0) == 0.0
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)  # a is now the most recent
    assert limiter.take("c", now=0.0) == 0.0  # evicts b, not a
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)  # a is still remembered as limited
    assert limiter.take("b", now=0.0) == 0.0  # b was forgotten: a fresh bucket (evicts c)
    assert limiter.take("c", now=0.0) == 0.0  # c was forgotten too
    for i in range(1000):
        limiter.take(f"client-{i}", now=1.0)
    assert len(limiter._buckets) == 2
