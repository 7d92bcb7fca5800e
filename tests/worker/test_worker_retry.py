"""Backoff arithmetic and the interim in-process retry rule."""

from __future__ import annotations

import pytest

from batchd.core.domain import RetryPolicy
from batchd.worker.retry import INLINE_DELAY_LIMIT, backoff, inline_delay


def test_backoff_doubles_then_grows_linearly_up_to_the_cap() -> None:
    # Cloud Tasks' documented example: 10 s, doubling 3 times, at most 300 s.
    policy = RetryPolicy(max_attempts=10, min_backoff=10, max_backoff=300, max_doublings=3)
    assert [backoff(policy, n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_backoff_without_min_backoff_is_immediate() -> None:
    assert backoff(RetryPolicy(max_attempts=3), 1) == 0.0


def test_inline_delay_stops_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, min_backoff=0.1, max_doublings=2)
    assert inline_delay(policy, 1, None) == pytest.approx(0.1)
    assert inline_delay(policy, 2, None) == pytest.approx(0.2)
    assert inline_delay(policy, 3, None) is None


def test_zero_max_attempts_means_one_attempt() -> None:
    assert inline_delay(RetryPolicy(), 1, None) is None


def test_retry_after_is_honoured_only_when_short() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert inline_delay(policy, 1, 0.25) == 0.25
    assert inline_delay(policy, 1, INLINE_DELAY_LIMIT) is None
    assert inline_delay(policy, 1, 30) is None


def test_long_backoff_is_cut_below_the_inline_limit() -> None:
    policy = RetryPolicy(max_attempts=5, min_backoff=10)
    delay = inline_delay(policy, 1, None)
    assert delay is not None
    assert delay < INLINE_DELAY_LIMIT
