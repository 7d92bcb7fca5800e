"""When to try a failed item again.

A failed attempt that may be retried is recorded as PENDING with a `retry_at` time; the
store parks the item and queues a deferred job for its chunk, so a waiting item holds no
concurrency slot and no job sleeps. This module only does the arithmetic: Cloud Tasks
backoff, spread by jitter so that items failing together do not come back together, and
never sooner than the handler's `retry_after` (an HTTP Retry-After, say).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from batchd.core.domain import RetryPolicy

__all__ = ["JITTER", "backoff", "retry_delay"]

# Delays are spread uniformly over ±JITTER of the backoff (and over +JITTER of a
# handler's retry_after, which is a floor).
JITTER = 0.2


def backoff(policy: RetryPolicy, retry: int) -> float:
    """The delay before retry number `retry` (1 = the second attempt), Cloud Tasks style.

    It starts at min_backoff, doubles max_doublings times, then grows linearly by the
    last doubled step, never above max_backoff (when set).
    """
    if retry < 1 or policy.min_backoff <= 0:
        return 0.0
    doublings = min(retry - 1, policy.max_doublings)
    delay = policy.min_backoff * 2**doublings
    linear_steps = retry - 1 - doublings
    if linear_steps > 0:
        delay += linear_steps * policy.min_backoff * 2**policy.max_doublings
    if policy.max_backoff > 0:
        delay = min(delay, policy.max_backoff)
    return float(delay)


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    retry_after: float | None,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before the next attempt, after attempt number `attempt` (from 1,
    counting every worker's attempts) failed; None when it was the last one allowed.

    The backoff is jittered by ±JITTER (then capped at max_backoff again); a handler's
    `retry_after` is a floor, spread upwards by up to JITTER so that items told to come
    back at the same time do not all do so at once.
    """
    if attempt >= max(policy.max_attempts, 1):
        return None
    delay = backoff(policy, attempt) * uniform(1 - JITTER, 1 + JITTER)
    if policy.max_backoff > 0:
        delay = min(delay, policy.max_backoff)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, retry_after * uniform(1.0, 1 + JITTER))
    return max(delay, 0.0)
