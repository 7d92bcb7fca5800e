"""Riding out Redis outages: which errors mean "Redis is away", how long to wait before
trying again, and logging an outage once rather than at every attempt.

Three layers keep a worker alive while Redis restarts or fails over:

- the worker's Redis client retries a command whose connection breaks while it is in
  flight, or times out (`client_retry`), reconnecting for several seconds: a command
  sent on a pooled connection just as Redis went away (the usual case) rides out a short
  restart. A command that must open a new connection while Redis is down fails at once
  (redis-py 5.3 connects outside its retry loop, and a refused connect raises OSError,
  which its Retry does not take).
- the loops that must not give up (outcome flushes, the ARQ poll loop, lease renewals,
  maintenance, the heartbeat) catch `REDIS_UNAVAILABLE` (outcome flushes and the poll
  loop also Redis refusing writes, `waited_out`) and try again after a capped, jittered
  backoff;
- a chunk's lease decides, once Redis is back, whether the chunk is still ours.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from batchd.core.backoff import Backoff
from batchd.core.metrics import OutageClock
from batchd.core.redis_refusals import refuses_writes

__all__ = [
    "CLIENT_RETRIES",
    "REDIS_UNAVAILABLE",
    "RETRY_ON",
    "Backoff",
    "Outage",
    "client_retry",
    "waited_out",
]

# Errors that mean Redis cannot be reached for now (not that a command is wrong):
# refused or dropped connections, timeouts, a server still loading its data
# (BusyLoadingError is a ConnectionError), a replica that became read-only in a
# failover, a cluster slot in migration.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    TryAgainError,
    ConnectionError,  # the builtin OSError subclass, raised by some socket paths
    TimeoutError,
)


def waited_out(exc: BaseException) -> bool:
    """`exc` is Redis away, or refusing writes for now (full, unable to persist, a
    replica: batchd.core.redis_refusals): what the loops that must not give up wait out."""
    return isinstance(exc, REDIS_UNAVAILABLE) or refuses_writes(exc)


# What the client retries by itself, command by command.
RETRY_ON: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]
# With ExponentialBackoff(cap=1 s, base=50 ms): up to about 8 s of retries for a command
# whose connection broke in flight; other failures surface to the loops above at once.
CLIENT_RETRIES = 10


def client_retry() -> Retry:
    """The retry policy of a worker's Redis client (see the module docstring)."""
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), CLIENT_RETRIES)


class Outage:
    """Logs the first failure of an outage as a warning and its end as info, with how
    long it lasted; the failures in between go to debug. `clock`, if any, counts them
    for the worker's metrics."""

    def __init__(
        self,
        log: structlog.typing.FilteringBoundLogger,
        what: str,
        clock: OutageClock | None = None,
    ) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.since: float | None = None
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, **fields: Any) -> None:
        self.failures += 1
        if self.clock is not None:
            self.clock.failed(self.what)
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("redis_unavailable", during=self.what, error=_describe(exc), **fields)
        else:
            self.log.debug("redis_still_unavailable", during=self.what, error=_describe(exc))

    def forget(self) -> None:
        """Ends the outage without a word (nothing left to try, so nothing to report)."""
        if self.since is not None and self.clock is not None:
            self.clock.recovered(self.what)
        self.since = None
        self.failures = 0

    def recovered(self, **fields: Any) -> None:
        if self.since is None:
            return
        if self.clock is not None:
            self.clock.recovered(self.what)
        self.log.info(
            "redis_available_again",
            during=self.what,
            outage=round(time.monotonic() - self.since, 3),
            failures=self.failures,
            **fields,
        )
        self.since = None
        self.failures = 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
