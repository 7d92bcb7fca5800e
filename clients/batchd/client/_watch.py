"""Watching a batch: the reconnect policy and the bookkeeping shared by both clients.

WatchProgress sends full snapshots, so a watcher that reconnects has lost nothing:
it opens a new stream and carries on from the snapshot the service sends first.
The stream ends with OK after the terminal snapshot; the client stops there too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from batchd.client._errors import BatchdError
from batchd.client._types import BatchProgress
from batchd.v1 import batch_service_pb2

__all__ = ["CLOSE_GRACE", "StreamSession", "WatchReconnect", "WatchRetry", "WatchSession"]

_log = logging.getLogger("batchd.client")

CLOSE_GRACE = 1.0
"""Seconds a watch that got its terminal snapshot waits for the service to end the
stream, which it does at once (OK), before hanging up: a stream reset while the service
closes it costs the service more than the close, and one ending thousands of watches at
once feels it."""


@dataclass(frozen=True)
class WatchRetry:
    """How `watch()` reconnects after losing its stream.

    Delays grow from `initial_backoff` by `multiplier` up to `max_backoff` (with
    jitter), or follow the service's RetryInfo when it sends one. After
    `max_retries` consecutive failures the last error is raised; every snapshot
    received resets the count.
    """

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_retries: int = 8
    retryable_codes: frozenset[grpc.StatusCode] = field(
        default=frozenset({grpc.StatusCode.UNAVAILABLE})
    )

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before reconnect number `failures` (from 1)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class WatchReconnect:
    """What `watch(on_reconnect=...)` is told each time the stream is lost, before
    the watch waits `delay` seconds and opens a new one."""

    error: BatchdError
    """What ended the stream (UNAVAILABLE, mostly)."""
    attempt: int
    """Reconnects in a row, from 1; a snapshot received starts the count again."""
    delay: float
    """Seconds until the next attempt."""


class StreamSession:
    """What a watch of either kind keeps across its streams: the reconnect policy and
    the failures in a row. Subclasses say what a lost stream's log line names."""

    def __init__(
        self, policy: WatchRetry, on_reconnect: Callable[[WatchReconnect], None] | None
    ) -> None:
        self.policy = policy
        self.on_reconnect = on_reconnect
        self.failures = 0

    def failed(self, exc: grpc.RpcError) -> BatchdError:
        """Maps a stream error; raises it unless the policy retries it."""
        error = BatchdError.from_rpc_error(exc)
        if error.code not in self.policy.retryable_codes:
            raise error from exc
        return error

    def backoff(self, error: BatchdError) -> float:
        """Counts a failure; returns the delay before reconnecting, or raises `error`
        once the retries are used up."""
        self.failures += 1
        if self.failures > self.policy.max_retries:
            raise error
        delay = self.policy.delay(self.failures, error.retry_after)
        _log.info(
            "%s lost its stream (%s: %s); reconnect %d/%d%s in %.2fs",
            self._watching(),
            error.code.name,
            error.message,
            self.failures,
            self.policy.max_retries,
            self._resuming(),
            delay,
        )
        self._reconnecting()
        if self.on_reconnect is not None:
            self.on_reconnect(WatchReconnect(error, self.failures, delay))
        return delay

    def _watching(self) -> str:
        """What is watched, for the log line of a lost stream."""
        raise NotImplementedError

    def _resuming(self) -> str:
        """Where the next stream starts, for that log line (" after ..."; "": no need to say)."""
        return ""

    def _reconnecting(self) -> None:
        """Called before each reconnect."""


class WatchSession(StreamSession):
    """The state of one `watch()` across its streams: sync and async share it."""

    def __init__(
        self,
        batch_id: str,
        policy: WatchRetry,
        on_reconnect: Callable[[WatchReconnect], None] | None = None,
    ) -> None:
        super().__init__(policy, on_reconnect)
        self.batch_id = batch_id
        self.last: BatchProgress | None = None
        self._reconnected = False

    def snapshot(self, response: batch_service_pb2.WatchProgressResponse) -> BatchProgress:
        """Converts a received message; the first one after a reconnect counts as a
        heartbeat when it shows what the previous stream showed last."""
        heartbeat = response.heartbeat
        progress = BatchProgress.from_proto(response.progress, heartbeat=heartbeat)
        if self._reconnected and self.last is not None and not heartbeat:
            same = (
                progress.state == self.last.state
                and progress.counts == self.last.counts
                and progress.total_items == self.last.total_items
            )
            if same:
                progress = BatchProgress.from_proto(response.progress, heartbeat=True)
        self._reconnected = False
        self.failures = 0
        self.last = progress
        return progress

    def ended_early(self) -> BatchdError:
        """The stream closed with OK before a terminal snapshot (a server going away)."""
        return BatchdError(
            grpc.StatusCode.UNAVAILABLE,
            f"watch of batch {self.batch_id!r} ended before the batch finished",
        )

    def _watching(self) -> str:
        return f"watch of batch {self.batch_id}"

    def _reconnecting(self) -> None:
        self._reconnected = True
