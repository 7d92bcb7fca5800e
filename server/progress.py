"""Progress snapshots for WatchProgress, shared by every watcher of a batch.

One `_Feed` per watched batch polls the store and keeps the latest snapshot and a
recent rate; any number of watchers read from it, each at its own pace. So 1,000
watchers of a batch cost the store one read per poll interval, not 1,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class Snapshot:
    batch: BatchRecord
    items_per_second: float
    eta: float | None
    observed_at: float
    version: int
    effective_rate: float = 0.0  # the batch's start rate in force (0: unlimited)


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
        self.changed = asyncio.Condition()
        self.watchers = 0
        self.error: Exception | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._effective_rate = 0.0
        self._effective_rate_at = 0.0  # time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name=f"progress-{self.batch_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
                self.error = exc
                async with self.changed:
                    self.changed.notify_all()
                await asyncio.sleep(self.poll_interval)
                continue
            previous = self.latest
            changed = previous is None or _differs(previous.batch, batch)
            rate_changed = await self._read_effective_rate(batch, changed)
            if changed or rate_changed:
                version += 1
                self.latest = self._snapshot(batch, version)
                async with self.changed:
                    self.changed.notify_all()
            if batch.state.is_terminal:
                return
            await asyncio.sleep(self.poll_interval)

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


def _differs(a: BatchRecord, b: BatchRecord) -> bool:
    return (a.state, a.counts, a.end_time, a.waiting_reason) != (
        b.state,
        b.counts,
        b.end_time,
        b.waiting_reason,
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
        self, store: BatchStore, *, worker_ttl: float, poll_interval: float = 0.05
    ) -> None:
        self.store = store
        self.worker_ttl = worker_ttl
        self.poll_interval = poll_interval
        self._feeds: dict[str, _Feed] = {}

    @property
    def watchers_open(self) -> int:
        """WatchProgress streams open on this server."""
        return sum(feed.watchers for feed in self._feeds.values())

    async def watch(
        self, batch_id: str, *, min_interval: float, heartbeat_interval: float
    ) -> AsyncIterator[tuple[Snapshot, bool]]:
        """Yields (snapshot, is_heartbeat): the current one at once, then one per change
        at most every `min_interval`, a heartbeat after `heartbeat_interval` of silence,
        and stops after the terminal snapshot. Store errors propagate."""
        feed = self._feeds.get(batch_id)
        if feed is None:
            feed = _Feed(self.store, batch_id, self.poll_interval, self.worker_ttl)
            self._feeds[batch_id] = feed
            feed.start()
        feed.watchers += 1
        try:
            sent = 0
            while True:
                snapshot = await self._next(feed, sent, heartbeat_interval)
                is_heartbeat = snapshot.version == sent
                yield snapshot, is_heartbeat
                sent = snapshot.version
                if snapshot.batch.state.is_terminal:
                    return
                await asyncio.sleep(min_interval)
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self._feeds.get(batch_id) is feed:
                del self._feeds[batch_id]
                await feed.stop()

    async def _next(self, feed: _Feed, sent: int, heartbeat_interval: float) -> Snapshot:
        """The feed's next snapshot newer than version `sent`, or the same one again
        after `heartbeat_interval`."""
        deadline = time.monotonic() + heartbeat_interval
        async with feed.changed:
            while True:
                if feed.error is not None:
                    raise feed.error
                latest = feed.latest
                if latest is not None and (latest.version != sent or time.monotonic() >= deadline):
                    return latest
                timeout = deadline - time.monotonic()
                if latest is None:
                    timeout = max(timeout, self.poll_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.changed.wait(), max(timeout, 0.001))

    async def close(self) -> None:
        """Ends every watch with UNAVAILABLE, so that clients reconnect to another server."""
        for feed in list(self._feeds.values()):
            await feed.stop()
            feed.error = Unavailable("the server is shutting down")
            async with feed.changed:
                feed.changed.notify_all()
