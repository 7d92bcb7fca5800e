"""Backoff arithmetic and the delay before an item's next attempt."""

from __future__ import annotations

import random

import pytest

from batchd.core.domain import RetryPolicy
from batchd.worker.retry import JITTER, backoff, retry_delay


def lowest(a: float, b: float) -> float:
    return a


def highest(a: float, b: float) -> float:
    return b


def test_backoff_doubles_then_grows_linearly_up_to_the_cap() -> None:
    # Cloud Tasks' documented example: 10 s, doubling 3 times, at most 300 s.
    policy = RetryPolicy(max_attempts=10, min_backoff=10, max_backoff=300, max_doublings=3)
    assert [backoff(policy, n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_backoff_without_min_backoff_is_immediate() -> None:
    assert backoff(RetryPolicy(max_attempts=3), 1) == 0.0


def test_no_retry_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, min_backoff=0.1, max_doublings=2)
    assert retry_delay(policy, 1, None, uniform=lowest) is not None
    assert retry_delay(policy, 2, None, uniform=lowest) is not None
    assert retry_delay(policy, 3, None) is None
    assert retry_delay(policy, 7, None) is None  # attempts made elsewhere count too


def test_zero_max_attempts_means_one_attempt() -> None:
    assert retry_delay(RetryPolicy(), 1, None) is None


def test_backoff_is_jittered_both_ways() -> None:
    policy = RetryPolicy(max_attempts=5, min_backoff=10, max_doublings=3)
    assert retry_delay(policy, 2, None, uniform=lowest) == pytest.approx(20 * (1 - JITTER))
    assert retry_delay(policy, 2, None, uniform=highest) == pytest.approx(20 * (1 + JITTER))
    rng = random.Random(1)
    delays = {retry_delay(policy, 2, None, uniform=rng.uniform) for _ in range(50)}
    assert len(delays) == 50  # items failing together come back apart
    assert all(d is not None and 16 <= d <= 24 for d in delays)


def test_jitter_never_exceeds_max_backoff() -> None:
    policy = RetryPolicy(max_attempts=10, min_backoff=10, max_backoff=30, max_doublings=5)
    assert retry_delay(policy, 5, None, uniform=highest) == 30


def test_retry_after_is_a_floor_even_above_max_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, min_backoff=1, max_backoff=10)
    assert retry_delay(policy, 1, 60, uniform=lowest) == 60
    assert retry_delay(policy, 1, 60, uniform=highest) == pytest.approx(60 * (1 + JITTER))
    # A shorter retry_after does not shorten the backoff.
    assert retry_delay(policy, 1, 0.5, uniform=lowest) == pytest.approx(1 - JITTER)


def test_immediate_retry_when_nothing_asks_for_a_delay() -> None:
    assert retry_delay(RetryPolicy(max_attempts=2), 1, None) == 0.0
    assert retry_delay(RetryPolicy(max_attempts=2), 1, 0.0) == 0.0
