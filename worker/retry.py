"""When to try a failed item again.

INTERIM: items are retried in-process, inside their chunk job, and only after short
delays (under `INLINE_DELAY_LIMIT`): a longer wait would hold a concurrency slot idle. A
later change moves retries to a delayed queue; `backoff` stays, `inline_delay` goes.
"""

from __future__ import annotations

from batchd.core.domain import RetryPolicy

__all__ = ["INLINE_DELAY_LIMIT", "backoff", "inline_delay"]

# The longest an item waits in-process before its next attempt, in seconds.
INLINE_DELAY_LIMIT = 1.0


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


def inline_delay(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float | None:
    """How long to wait before trying again after `attempt` failed; None: give up now.

    INTERIM: a handler's `retry_after` is honoured only below INLINE_DELAY_LIMIT (longer
    fails the item for now); the policy's backoff is cut down to fit under it.
    """
    if attempt >= max(policy.max_attempts, 1):
        return None
    if retry_after is not None:
        delay = max(retry_after, 0.0)
        return delay if delay < INLINE_DELAY_LIMIT else None
    return min(backoff(policy, attempt), INLINE_DELAY_LIMIT * 0.9)
