"""WatchBatches streams: each reads its tenant's events after its own cursor.

Each stream reads pages of events itself (batchd.core.events.EventLog.read, never
blocking), so resuming from any cursor and filtering cost nothing shared. What it waits
on between pages is shared: one `_Follower` per tenant with streams open blocks on the
tenant's Redis stream (XREAD BLOCK) and wakes that tenant's streams when an event comes,
so a thousand idle streams hold one Redis connection, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from batchd.core.domain import BatchState
from batchd.core.errors import Unavailable
from batchd.core.events import OLDEST, BatchEvent, BatchEventType, EventLog
from batchd.core.logs import get_logger

__all__ = ["Delivery", "EventFilter", "EventHub"]

log = get_logger(__name__)

# Events a stream reads per Redis call.
PAGE_SIZE = 200
# Milliseconds a follower blocks in XREAD before it asks again (so that a stop is quick);
# at most half the server's bound on a Redis reply, which a quiet stream's XREAD would
# otherwise outlast (`follow_block_ms`).
FOLLOW_BLOCK_MS = 5_000
# Seconds a follower waits after a Redis error before it tries again.
FOLLOW_RETRY = 1.0


def follow_block_ms(redis_timeout: float) -> int:
    """How long a follower's XREAD blocks under a reply bound of `redis_timeout` seconds
    (Settings.redis_timeout; 0: none)."""
    if redis_timeout <= 0:
        return FOLLOW_BLOCK_MS
    return max(1, min(FOLLOW_BLOCK_MS, int(redis_timeout * 1000 / 2)))


@dataclass(frozen=True)
class EventFilter:
    """Which events a stream sends: each non-empty part must match (AND)."""

    states: frozenset[BatchState] = frozenset()
    types: frozenset[BatchEventType] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    handler: str = ""

    def __call__(self, event: BatchEvent) -> bool:
        return (
            (not self.states or event.state in self.states)
            and (not self.types or event.type in self.types)
            and (not self.handler or event.handler == self.handler)
            and all(event.metadata.get(key) == value for key, value in self.labels.items())
        )


@dataclass(frozen=True)
class Delivery:
    """What a stream sends next: events that passed its filter (none: a heartbeat), and
    the cursor it has read up to."""

    events: list[BatchEvent]
    cursor: str


class _Follower:
    """Wakes a tenant's streams whenever its event stream grows."""

    def __init__(self, log_: EventLog, tenant: str, block_ms: int = FOLLOW_BLOCK_MS) -> None:
        self.log = log_
        self.tenant = tenant
        self.block_ms = block_ms
        self.version = 0  # moves with every wake
        self.changed = asyncio.Condition()
        self.ready = asyncio.Event()
        self.error: Exception | None = None
        self.streams = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"events-{self.tenant}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wake(self) -> None:
        self.version += 1
        async with self.changed:
            self.changed.notify_all()

    async def _follow(self) -> None:
        latest: str | None = None
        while True:
            try:
                if latest is None:
                    latest = await self.log.position_now(self.tenant)
                    self.ready.set()
                    await self.wake()  # streams that read before `latest` read again
                newer = await self.log.wait_after(self.tenant, latest, self.block_ms)
            except Exception as exc:  # the streams' own reads fail and tell their callers
                log.warning("events_follow_failed", tenant=self.tenant, error=str(exc))
                self.ready.set()
                await self.wake()
                await asyncio.sleep(FOLLOW_RETRY)
                continue
            if newer is not None:
                latest = newer
                await self.wake()


class EventHub:
    """The WatchBatches streams of one server."""

    def __init__(self, log_: EventLog, block_ms: int = FOLLOW_BLOCK_MS) -> None:
        self.log = log_
        self.block_ms = block_ms
        self._followers: dict[str, _Follower] = {}

    @property
    def streams_open(self) -> int:
        """WatchBatches streams open on this server."""
        return sum(follower.streams for follower in self._followers.values())

    async def start_position(self, tenant: str, cursor: str, from_oldest: bool) -> str:
        """Where a stream starts: after `cursor`, the oldest event, or now."""
        if cursor:
            return cursor
        if from_oldest:
            return OLDEST
        return await self.log.position_now(tenant)

    async def watch(
        self,
        tenant: str,
        position: str,
        *,
        keep: Callable[[BatchEvent], bool],
        heartbeat_interval: float,
    ) -> AsyncIterator[Delivery]:
        """The tenant's events after `position` that `keep` lets through, a page at a time,
        for ever: first an empty Delivery (a heartbeat) with `position`, then one after
        every `heartbeat_interval` seconds without events. Store errors propagate
        (FailedPrecondition for a trimmed or foreign cursor, before anything is
        yielded); Unavailable when the server shuts down."""
        follower = self._followers.get(tenant)
        if follower is None:
            follower = _Follower(self.log, tenant, self.block_ms)
            self._followers[tenant] = follower
            follower.start()
        follower.streams += 1
        try:
            await follower.ready.wait()
            # The first page is read before anything is sent: a cursor whose events were
            # trimmed, or that is none of this stream's, fails the call before it starts.
            seen = follower.version
            page = await self.log.read(tenant, position, PAGE_SIZE)
            yield Delivery([], position)  # where the stream starts: a resume loses nothing
            sent_at = time.monotonic()
            while True:
                position = page.position
                kept = [event for event in page.events if keep(event)]
                if kept:
                    yield Delivery(kept, position)
                    sent_at = time.monotonic()
                if len(page.events) < PAGE_SIZE:  # else more to read at once
                    silence = heartbeat_interval - (time.monotonic() - sent_at)
                    if silence <= 0 or not await self._woken(follower, seen, silence):
                        if follower.error is not None:
                            raise follower.error
                        if time.monotonic() - sent_at >= heartbeat_interval:
                            yield Delivery([], position)
                            sent_at = time.monotonic()
                if follower.error is not None:
                    raise follower.error
                seen = follower.version
                page = await self.log.read(tenant, position, PAGE_SIZE)
        finally:
            follower.streams -= 1
            if follower.streams == 0 and self._followers.get(tenant) is follower:
                del self._followers[tenant]
                await follower.stop()

    @staticmethod
    async def _woken(follower: _Follower, seen: int, within: float) -> bool:
        """Waits up to `within` seconds for the follower to move past version `seen`."""
        async with follower.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    follower.changed.wait_for(
                        lambda: follower.version != seen or follower.error is not None
                    ),
                    within,
                )
        return follower.version != seen

    async def close(self) -> None:
        """Ends every stream with UNAVAILABLE, so that clients resume on another server."""
        for follower in list(self._followers.values()):
            await follower.stop()
            follower.error = Unavailable("the server is shutting down")
            follower.ready.set()
            async with follower.changed:
                follower.changed.notify_all()
