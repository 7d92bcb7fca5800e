"""Progress snapshots for WatchProgress, shared by every watcher of a batch.

One `_Feed` per watched batch polls the store and keeps the latest snapshot and a
recent rate; any number of watchers read from it, each at its own pace. So 1,000
watchers of a batch cost the store one read per poll interval, not 1,000, and a watcher
costs no store read at all once its batch's feed has a snapshot.

A waiting watcher holds no task, timer or queue of its own: it parks one future in its
feed's set (woken by the next snapshot, or only by the terminal one while its
`min_interval` runs) and in the hub's shared tick for its next due time (`_Ticks`), so a
snapshot wakes only the watchers that may send it. A feed polls every `poll_interval`,
and at once when the script that ends its batch says so (`Keys.ended`,
batchd.core.wakeups): the terminal snapshot does not wait for the next poll. See
docs/design.md, "Watchers".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from batchd.core import wakeups
from batchd.core.domain import BatchRecord
from batchd.core.errors import Unavailable
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore

log = get_logger(__name__)

# The effective rate (flow control) is read again at least this often, and with every
# change of the batch.
EFFECTIVE_RATE_INTERVAL = 1.0
# The rate is measured over this window: long enough to smooth flush bursts, short
# enough to follow a change of pace.
RATE_WINDOW = 10.0
# Whether a live worker serves the batch's handler is read again at least this often.
WAITING_REASON_INTERVAL = 1.0
# Watchers due within the same tick of this many seconds wake from one shared timer; a
# due time is rounded up, so no interval is ever cut short.
TICK = 0.01


@dataclass(frozen=True)
class Snapshot:
    batch: BatchRecord
    items_per_second: float
    eta: float | None
    observed_at: float
    version: int
    effective_rate: float = 0.0  # the batch's start rate in force (0: unlimited)
    # What the edge made of this snapshot, by its own key (a serialized message per
    # caller's view of the id): made once, whatever the number of watchers.
    encoded: dict[object, bytes] = field(default_factory=dict, compare=False, repr=False)


class _Feed:
    def __init__(
        self, store: BatchStore, batch_id: str, poll_interval: float, worker_ttl: float
    ) -> None:
        self.store = store
        self.batch_id = batch_id
        self.poll_interval = poll_interval
        self.worker_ttl = worker_ttl
        self._reason = ""
        self._reason_at = -WAITING_REASON_INTERVAL  # time.monotonic()
        self.latest: Snapshot | None = None
        self.watchers = 0
        # Watchers woken by the next snapshot (or error), and those woken only by the
        # terminal one.
        self.on_snapshot: set[asyncio.Future[None]] = set()
        self.on_terminal: set[asyncio.Future[None]] = set()
        self.error: Exception | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._effective_rate = 0.0
        self._effective_rate_at = 0.0  # time.monotonic()
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Reads the batch now rather than at the next poll."""
        self._nudged.set()

    async def _pause(self) -> None:
        """`poll_interval` seconds, or until nudged."""
        await wakeups.wait(self._nudged, self.poll_interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name=f"progress-{self.batch_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def fail(self, error: Exception) -> None:
        """Every watcher wakes to `error`."""
        self.error = error
        _wake(self.on_snapshot)
        _wake(self.on_terminal)

    async def _explained(self, batch: BatchRecord) -> BatchRecord:
        """The batch with its waiting reason, read again at most every
        WAITING_REASON_INTERVAL (and at every change of state)."""
        now = time.monotonic()
        latest = self.latest
        if (
            now - self._reason_at >= WAITING_REASON_INTERVAL
            or latest is None
            or latest.batch.state != batch.state
        ):
            [explained] = await self.store.explain_waits([batch], self.worker_ttl)
            self._reason, self._reason_at = explained.waiting_reason, now
        return replace(batch, waiting_reason=self._reason)

    async def _poll(self) -> None:
        version = 0
        while True:
            try:
                batch = await self._explained(await self.store.get_batch(self.batch_id))
                self.error = None
            except Exception as exc:  # the watchers decide what an error means to them
                self.fail(exc)
                await self._pause()
                continue
            previous = self.latest
            changed = previous is None or _differs(previous.batch, batch)
            rate_changed = await self._read_effective_rate(batch, changed)
            if changed or rate_changed:
                version += 1
                self.latest = self._snapshot(batch, version)
                _wake(self.on_snapshot)
                if batch.state.is_terminal:
                    _wake(self.on_terminal)
            if batch.state.is_terminal:
                return
            await self._pause()

    def _snapshot(self, batch: BatchRecord, version: int) -> Snapshot:
        now = time.time()
        finished = batch.counts.finished
        samples = self._samples
        samples.append((now, finished))
        while len(samples) > 2 and samples[0][0] < now - RATE_WINDOW:
            samples.popleft()
        rate = _rate(batch, samples, now)
        remaining = batch.total_items - finished
        eta = remaining / rate if rate > 0 and remaining else (0.0 if not remaining else None)
        return Snapshot(batch, rate, eta, now, version, self._effective_rate)

    async def _read_effective_rate(self, batch: BatchRecord, changed: bool) -> bool:
        """Reads the batch's effective rate when the batch changed or it is due; returns
        whether it moved. An error keeps the last value: it is only shown."""
        due = time.monotonic() - self._effective_rate_at >= EFFECTIVE_RATE_INTERVAL
        if not (changed or due) or batch.state.is_terminal:
            return False
        self._effective_rate_at = time.monotonic()
        try:
            rate = round(await self.store.effective_rate(batch), 2)
        except Exception:
            log.debug("effective_rate_failed", batch_id=batch.batch_id, exc_info=True)
            return False
        moved, self._effective_rate = rate != self._effective_rate, rate
        return moved


def _wake(waiters: set[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class _Ticks:
    """Shared timers: one per TICK in which some watcher is due, however many are."""

    def __init__(self) -> None:
        self._due: dict[int, set[asyncio.Future[None]]] = {}

    def add(
        self, loop: asyncio.AbstractEventLoop, when: float, waiter: asyncio.Future[None]
    ) -> int:
        """Wakes `waiter` at `when` (loop time) or up to a TICK later; returns the tick."""
        tick = math.ceil(when / TICK)
        waiters = self._due.get(tick)
        if waiters is None:
            waiters = self._due[tick] = set()
            loop.call_at(tick * TICK, self._fire, tick)
        waiters.add(waiter)
        return tick

    def discard(self, tick: int, waiter: asyncio.Future[None]) -> None:
        waiters = self._due.get(tick)
        if waiters is not None:
            waiters.discard(waiter)

    def _fire(self, tick: int) -> None:
        _wake(self._due.pop(tick, set()))


def _differs(a: BatchRecord, b: BatchRecord) -> bool:
    return (a.state, a.counts, a.end_time, a.waiting_reason, a.uploading) != (
        b.state,
        b.counts,
        b.end_time,
        b.waiting_reason,
        b.uploading,
    )


def _rate(batch: BatchRecord, samples: deque[tuple[float, int]], now: float) -> float:
    if batch.state.is_terminal and batch.start_time and batch.end_time:
        span = batch.end_time - batch.start_time
        return batch.counts.finished / span if span > 0 else 0.0
    (t0, f0), (t1, f1) = samples[0], samples[-1]
    if t1 > t0 and f1 > f0:
        return (f1 - f0) / (t1 - t0)
    if batch.start_time and len(samples) == 1:
        # A fresh watcher has no window yet: the average since the start is the best guess.
        span = now - batch.start_time
        return batch.counts.finished / span if span > 0 else 0.0
    return 0.0


class ProgressHub:
    def __init__(
        self,
        store: BatchStore,
        *,
        worker_ttl: float,
        poll_interval: float = 0.05,
        ended_channel: str | None = None,
    ) -> None:
        self.store = store
        self.worker_ttl = worker_ttl
        self.poll_interval = poll_interval
        self._feeds: dict[str, _Feed] = {}
        self._ticks = _Ticks()
        self._ended_channel = ended_channel
        self._listening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Listens for batch ends (if given a channel), to read them at once."""
        if self._ended_channel is not None and self._listening is None:
            self._listening = asyncio.create_task(
                wakeups.listen(self.store.redis, self._ended_channel, self._on_ended),
                name="progress-ends",
            )

    def _on_ended(self, batch_id: bytes) -> None:
        feed = self._feeds.get(batch_id.decode())
        if feed is not None:
            feed.nudge()

    @property
    def watchers_open(self) -> int:
        """WatchProgress streams open on this server."""
        return sum(feed.watchers for feed in self._feeds.values())

    async def watch(
        self, batch_id: str, *, min_interval: float, heartbeat_interval: float
    ) -> AsyncIterator[tuple[Snapshot, bool]]:
        """Yields (snapshot, is_heartbeat): the current one at once, then one per change
        at most every `min_interval` (the terminal one at once), a heartbeat after
        `heartbeat_interval` of silence, and stops after the terminal snapshot. Store
        errors propagate (NotFound before anything is yielded)."""
        feed = self._feeds.get(batch_id)
        if feed is None:
            feed = _Feed(self.store, batch_id, self.poll_interval, self.worker_ttl)
            self._feeds[batch_id] = feed
            feed.start()
        feed.watchers += 1
        loop = asyncio.get_running_loop()
        try:
            snapshot, is_heartbeat = await self._first(feed), False
            while True:
                yield snapshot, is_heartbeat
                if snapshot.batch.state.is_terminal:
                    return
                sent_at = loop.time()
                snapshot, is_heartbeat = await self._next(
                    loop,
                    feed,
                    snapshot.version,
                    sent_at + min_interval,
                    sent_at + max(heartbeat_interval, min_interval),
                )
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self._feeds.get(batch_id) is feed:
                del self._feeds[batch_id]
                await feed.stop()

    async def _first(self, feed: _Feed) -> Snapshot:
        while True:
            if feed.error is not None:
                raise feed.error
            if feed.latest is not None:
                return feed.latest
            await self._wait(asyncio.get_running_loop(), feed.on_snapshot, None)

    async def _next(
        self,
        loop: asyncio.AbstractEventLoop,
        feed: _Feed,
        sent: int,
        ready_at: float,
        beat_at: float,
    ) -> tuple[Snapshot, bool]:
        """What to send after version `sent`: a newer snapshot from `ready_at` on (the
        terminal one at once), else the same one again as a heartbeat at `beat_at`."""
        while True:
            if feed.error is not None:
                raise feed.error
            latest = feed.latest
            assert latest is not None  # a feed never drops its snapshot
            now = loop.time()
            changed = latest.version != sent
            if changed and (now >= ready_at or latest.batch.state.is_terminal):
                return latest, False
            if not changed and now >= beat_at:
                return latest, True
            if now < ready_at:  # only the terminal snapshot may come before ready_at
                await self._wait(loop, feed.on_terminal, ready_at)
            else:
                await self._wait(loop, feed.on_snapshot, beat_at)

    async def _wait(
        self,
        loop: asyncio.AbstractEventLoop,
        waiters: set[asyncio.Future[None]],
        until: float | None,
    ) -> None:
        """Until `waiters` are woken, or (loop time) `until`."""
        waiter = loop.create_future()
        waiters.add(waiter)
        tick = None if until is None else self._ticks.add(loop, until, waiter)
        try:
            await waiter
        finally:
            waiters.discard(waiter)
            if tick is not None:
                self._ticks.discard(tick, waiter)

    async def close(self) -> None:
        """Ends every watch with UNAVAILABLE, so that clients reconnect to another server."""
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        for feed in list(self._feeds.values()):
            await feed.stop()
            feed.fail(Unavailable("the server is shutting down"))
