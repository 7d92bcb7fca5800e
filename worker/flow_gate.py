"""Flow control in a chunk run: when an item may start (docs/design.md, "Flow control:
rates and concurrency", "In the worker").

`FlowGate.admit` gets an item, in order, a slot of the batch's `max_concurrent`
(`_BatchSlots`, held in Redis in blocks with the chunk's lease), a worker slot
(`in_flight`, the process-wide semaphore) and a start permit of each of its rate-limit
buckets (`_Permits`, one per bucket list per process, taken in blocks for everyone
waiting; a permit not used within PERMIT_TTL is dropped, so starts never outrun the
buckets); `FlowGate.done` gives them back. Only one consumer of a run waits for permits
while holding a worker slot (`_turn`), so a slow bucket does not tie up the process.
A SlowDown from the handler cuts the item's last bucket for every worker. Redis errors
never fail an item: the gate waits and tries again, or, once the chunk stops starting
items (`halted`), the item goes back to the queue.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from batchd.core import fastjson
from batchd.core.background import BackgroundTasks
from batchd.core.domain import BatchState, ClaimedChunk
from batchd.core.store import BatchStore
from batchd.core.throttle import Bucket, buckets_for
from batchd.worker.attempts import Item
from batchd.worker.fifo_semaphore import FifoSemaphore
from batchd.worker.handler import Handler, SlowDown
from batchd.worker.metrics import WorkerMetrics

__all__ = ["Admission", "FlowGate", "PermitPool"]

# Granted permits not used within this long of their grant, or of a reservation's
# time, are dropped (the bucket counted them as starts then).
PERMIT_TTL = 0.05
# A batch with no rate limit, no key and no handler key starts this long unasked (its
# bucket only matters after a SlowDown).
OPTIMISTIC_FREE = 0.1
# A free period (unlimited buckets, 0.1 s) is renewed this long before it ends (twenty
# takes a second, a script call each, while items start): early
# enough that a busy event loop still has the answer in time.
RENEW_AHEAD = 0.05
# ... and, while the renewal is on the way, lasts at most this much longer.
RENEW_GRACE = 1.0
# A consumer with no max_concurrent slot looks again this often (jittered).
SLOT_POLL = 0.05
# After a Redis error the gate tries again this much later.
ERROR_PAUSE = 0.5
# Sleeps are cut into steps this long, to notice a halt.
HALT_CHECK = 0.1

Halted = Callable[[], bool]


class Admission:
    """An admitted item's start: tell `slow_down` of a SlowDown it met."""

    __slots__ = ("permits", "slowed")

    def __init__(self, permits: _Permits) -> None:
        self.permits = permits
        self.slowed = False

    async def slow_down(self, exc: SlowDown, started: float) -> None:
        self.slowed = True
        await self.permits.slow_down(started, exc.retry_after)


class PermitPool:
    """The process's `_Permits`, by bucket list, and their renewals in the background."""

    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self._by_buckets: dict[tuple[Bucket, ...], _Permits] = {}
        self._renewals = BackgroundTasks()
        self._metrics = metrics

    async def close(self) -> None:
        """Ends the renewals on the way (before the worker's Redis pool closes)."""
        await self._renewals.cancel_all()

    def get(
        self,
        store: BatchStore,
        buckets: Sequence[Bucket],
        log: structlog.typing.FilteringBoundLogger,
        *,
        optimistic: bool = False,
        kind: str = "batch",
    ) -> _Permits:
        """`optimistic`: a new one starts with a free period, unasked. `kind`: what the
        last bucket is (batch, rate_limit_key, handler), for the metrics."""
        key = tuple(buckets)
        permits = self._by_buckets.get(key)
        if permits is None:
            if len(self._by_buckets) > 1000:  # of batches long gone, mostly
                self._by_buckets.clear()
            permits = self._by_buckets[key] = _Permits(store, buckets, log, self._renewals)
            if self._metrics is not None:
                permits.waited = self._metrics.rate_limit_wait.labels(kind)
                permits.cuts = self._metrics.rate_limit_cuts.labels(kind)
            if optimistic:
                permits.free_until = time.monotonic() + OPTIMISTIC_FREE
        return permits


class FlowGate:
    """The flow limits of one chunk run (see the module docstring)."""

    def __init__(
        self,
        store: BatchStore,
        claimed: ClaimedChunk,
        handler: Handler | None,
        in_flight: FifoSemaphore,
        pool: PermitPool,
        queued: Callable[[], int],
        log: structlog.typing.FilteringBoundLogger,
        on_batch_state: Callable[[BatchState | None], None] = lambda state: None,
    ) -> None:
        """`queued()`: how many of the run's items wait in its queue. `on_batch_state` is
        told the batch's state (None: gone) whenever a max_concurrent call learns it."""
        self.pool = pool
        self.store = store
        self.claimed = claimed
        self.handler = handler
        self.in_flight = in_flight
        self.log = log
        limit = claimed.options.max_concurrent
        self.batch_slots = (
            _BatchSlots(store, claimed, limit, queued, log, on_batch_state) if limit > 0 else None
        )
        self._permits: dict[str | None, _Permits] = {}
        # No item has a key of its own (no key function, or the batch's own key wins):
        # every item takes the same permits, found once.
        self._no_item_keys = (
            handler is None or handler.rate_key is None or bool(claimed.options.rate_limit_key)
        )
        self._keyless: _Permits | None = None
        self._last: tuple[Item, _Permits] | None = None  # an item, its permits: _permits_for
        # Worker slots gathered for a block's other items (`admit_more` takes them).
        self._spare_slots = 0
        self._turn = asyncio.Lock()
        self._turn_over = asyncio.Event()  # set (and replaced) when a turn ends

    def admit_now(self, item: Item) -> Admission | None:
        """`admit` without waiting, for the usual case: no max_concurrent, a permit at
        hand and a worker slot free. None: nothing is held; call `admit`."""
        if self.batch_slots is not None or self.in_flight.locked():
            return None
        permits = self._permits_for(item)
        if not permits.take_now():
            return None
        self.in_flight.try_acquire()  # free: checked above, and nothing ran since
        return Admission(permits)

    def flow_limited(self, item: Item) -> bool:
        """A start of `item` waits for a max_concurrent slot or a rate permit (more than
        for a worker slot)."""
        return self.batch_slots is not None or not self._permits_for(item).at_hand()

    async def admit(self, item: Item, halted: Halted, *, want: int = 1) -> Admission | None:
        """What `item` needs to run, held until `done`; None if the chunk halted first
        (then nothing is held, and the caller puts the item back). `want`: items the
        caller would start together (a block), what Redis is asked for on its behalf;
        it takes the rest with `admit_more`."""
        permits = self._permits_for(item)
        if self.batch_slots is not None and not await self.batch_slots.acquire(halted, want):
            return None
        try:
            admitted = await self._worker_slot_and_permit(permits, halted, want)
        except BaseException:
            if self.batch_slots is not None:
                await self.batch_slots.release()
            raise
        if admitted:
            return Admission(permits)
        if self.batch_slots is not None:
            await self.batch_slots.release()
        return None

    def admit_more(self, item: Item) -> Admission | None:
        """`item`'s max_concurrent slot, worker slot and permit if all are at hand now,
        for the next item of a block; None (nothing held) if any is not: the block
        starts smaller rather than wait."""
        slots = self.batch_slots
        if slots is not None and slots.in_use >= slots.held:
            return None
        if not self._spare_slots and self.in_flight.locked():
            return None
        permits = self._permits_for(item)
        if not permits.take_now():
            return None
        if self._spare_slots:
            self._spare_slots -= 1
        else:
            self.in_flight.try_acquire()  # free: checked above, and nothing ran since
        if slots is not None:
            slots.in_use += 1
        return Admission(permits)

    def block_formed(self) -> None:
        """The block `admit(want=...)` began is complete: gives back the worker slots
        gathered for it and not used."""
        while self._spare_slots:
            self._spare_slots -= 1
            self.in_flight.release()

    async def done(self, admission: Admission) -> None:
        """The admitted item ended: gives back what `admit` took."""
        self.done_now(admission)
        if self.batch_slots is not None:
            await self.batch_slots.release()

    def done_now(self, admission: Admission) -> None:
        """`done` without its wait: all of it unless the run holds max_concurrent slots."""
        self.in_flight.release()
        if not admission.slowed:
            admission.permits.ok += 1

    async def _worker_slot_and_permit(self, permits: _Permits, halted: Halted, want: int) -> bool:
        permits.waiting += want  # what the next take asks for: every item ready to start
        try:
            while True:
                if permits.at_hand():
                    # Straight to the worker slot (a semaphore wakes as many waiters as
                    # slots come free); a block's first item gathers slots for the rest.
                    slots = await self.in_flight.acquire_up_to(want)
                    if permits.take_now():
                        self._spare_slots += slots - 1
                        return True
                    for _ in range(slots):  # taken meanwhile: wait for permits
                        self.in_flight.release()
                if halted():
                    return False
                if self._turn.locked():
                    # Another consumer of this run waits for permits: wait for it to
                    # finish, then look again, all together. (Queueing on the lock would
                    # let one consumer through per event-loop pass.)
                    await self._turn_over.wait()
                    continue
                return await self._take_turn(permits, halted)
        finally:
            permits.waiting -= want

    async def _take_turn(self, permits: _Permits, halted: Halted) -> bool:
        """Waits for a permit holding a worker slot: one consumer of the run at a time."""
        async with self._turn:
            try:
                await self.in_flight.acquire()
                try:
                    if await permits.take(halted):
                        return True
                except BaseException:
                    self.in_flight.release()
                    raise
                self.in_flight.release()
                return False
            finally:
                self._turn_over.set()
                self._turn_over = asyncio.Event()

    def _permits_for(self, item: Item) -> _Permits:
        if self._keyless is not None:
            return self._keyless
        # A consumer asks for one item's permits up to three times in a row (admit_now,
        # flow_limited, admit), and the key function parses the item's params each time.
        last = self._last
        if last is not None and last[0] is item:
            return last[1]
        key = self._item_key(item)
        permits = self._permits.get(key)
        if permits is None:
            buckets = buckets_for(self.store.keys, self.claimed.batch_id, self.claimed.options, key)
            # Only the batch's own adaptive bucket, unlimited until a SlowDown: start at
            # once, as if a first take had said so.
            optimistic = key is None and not any(b.rate for b in buckets)
            kind = (
                "rate_limit_key"
                if self.claimed.options.rate_limit_key
                else "batch"
                if key is None
                else "handler"
            )
            permits = self.pool.get(self.store, buckets, self.log, optimistic=optimistic, kind=kind)
            self._permits[key] = permits
            if self._no_item_keys:
                self._keyless = permits
        self._last = (item, permits)
        return permits

    def _item_key(self, item: Item) -> str | None:
        if self._no_item_keys or self.handler is None or self.handler.rate_key is None:
            return None  # (the second test only tells the type checker what the first did)
        try:
            return self.handler.rate_key(fastjson.loads(item[2]))
        except Exception:  # a bad key function or params: no key, the item still runs
            return None


class _Permits:
    """Start permits of one list of buckets, for the chunk runs of a process."""

    def __init__(
        self,
        store: BatchStore,
        buckets: Sequence[Bucket],
        log: structlog.typing.FilteringBoundLogger,
        renewals: BackgroundTasks,
    ) -> None:
        """`renewals`: where free-period renewals are kept while they run (the pool's)."""
        self.store = store
        self.buckets = list(buckets)
        self.log = log
        self._renewals = renewals
        self.left = 0  # granted, unused
        self.granted_at = 0.0  # time.monotonic()
        self.free_until = 0.0  # time.monotonic(): unlimited until then
        self.used = 0  # starts in free periods beyond what the takes asked, unreported
        self.prepaid = 0  # what the last free take asked for (the script counted it)
        self.ok = 0  # items ended without a slow-down, unreported
        self.offset = 0.0  # the buckets' clock minus time.time()
        self.waiting = 0  # consumers (of any chunk run) waiting for a permit
        self._lock = asyncio.Lock()
        self._renewal: asyncio.Task[None] | None = None
        # The worker's metrics, if any: seconds waited for permits, adaptive cuts.
        self.waited: Any = None
        self.cuts: Any = None

    async def take(self, halted: Halted) -> bool:
        """One permit, at once or after waiting for it; False if halted first."""
        if self.take_now():
            return True
        async with self._lock:  # one take at a time, for every run waiting
            return await self._take(halted)

    def at_hand(self) -> bool:
        """A permit could be taken now (`take_now` takes it)."""
        now = time.monotonic()
        return self._free(now) or (self.left > 0 and now - self.granted_at < PERMIT_TTL)

    def take_now(self) -> bool:
        """One permit if one is at hand (a free period, or granted and fresh)."""
        now = time.monotonic()
        if self._free(now):
            if self.free_until - now < RENEW_AHEAD:
                self._renew_free_period()
            if self.prepaid > 0:
                self.prepaid -= 1
            else:
                self.used += 1
            return True
        if self.left > 0 and now - self.granted_at < PERMIT_TTL:
            self.left -= 1
            return True
        return False

    def _free(self, now: float) -> bool:
        """In a free period — or just past it while its renewal is on the way (a loop
        too busy to hear Redis in time must not stop every start); a slow-down ends it
        at once (free_until 0)."""
        if now < self.free_until:
            return True
        renewing = self._renewal is not None and not self._renewal.done()
        return renewing and now < self.free_until + RENEW_GRACE

    def _renew_free_period(self) -> None:
        """Asks for the next free period before this one ends, in the background: a
        take when it has ended would stop every start until Redis answers."""
        if self._renewal is None or self._renewal.done():
            self._renewal = self._renewals.spawn(self._renew(), "renew free period")

    async def _renew(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if not now < self.free_until or self.free_until - now >= RENEW_AHEAD:
                return  # ended (starts take the usual way), or renewed meanwhile
            used, ok = self.used, self.ok
            try:
                grant = await self.store.take_permits(self.buckets, 0, used=used, ok=ok)
            except Exception:
                self.log.warning("rate_permits_failed", exc_info=True)
                return  # the period ends; the next start asks again
            self.used -= used
            self.ok -= ok
            self.offset = grant.now - time.time()
            if grant.free_for > 0 and self.free_until > 0:  # not cut by a slow-down meanwhile
                # From the answer, not the ask: on a busy loop the answer can come later
                # than the whole period would have lasted.
                self.free_until = time.monotonic() + grant.free_for

    async def _take(self, halted: Halted) -> bool:
        while not self.take_now():
            self.left = 0
            if halted():
                return False
            used, ok, now = self.used, self.ok, time.monotonic()
            try:
                grant = await self.store.take_permits(self.buckets, self.waiting, used=used, ok=ok)
            except Exception:
                self.log.warning("rate_permits_failed", exc_info=True)
                await _sleep(ERROR_PAUSE, halted)
                continue
            self.used -= used
            self.ok -= ok
            self.offset = grant.now - time.time()
            if grant.free_for > 0:
                self.free_until, self.prepaid = now + grant.free_for, grant.granted
            elif grant.granted > 0:
                if grant.wait > 0:  # reserved: their tokens are there only then
                    await self._wait(grant.wait, halted)
                    if halted():
                        continue
                # Fresh from the grant (or the reservation's time) as the bucket counted
                # it, not from when this loop got to them: the ask was no later than the
                # grant, so a late answer or an overslept wait drops permits rather
                # than start them late, on top of other workers' on-time starts.
                self.left, self.granted_at = grant.granted, now + grant.wait
            else:
                await self._wait(grant.wait, halted)
        return True

    async def _wait(self, seconds: float, halted: Halted) -> None:
        """Waits for the bucket's tokens, the time counted in the metrics."""
        started = time.monotonic()
        try:
            await _sleep(seconds, halted)
        finally:
            if self.waited is not None:
                self.waited.inc(time.monotonic() - started)

    async def slow_down(self, started: float, retry_after: float | None) -> None:
        """An item started at `started` (time.time()) met a SlowDown."""
        self.free_until = 0.0  # look at the bucket before the next start
        bucket, used, ok = self.buckets[-1], self.used, self.ok
        try:
            cut, rate = await self.store.slow_down(
                bucket, started=started + self.offset, used=used, ok=ok, retry_after=retry_after
            )
        except Exception:
            self.log.warning("rate_slow_down_failed", exc_info=True)
            return
        self.used -= used
        self.ok -= ok
        if cut:
            self.log.info("rate_slowed_down", key=bucket.key, rate=round(rate, 2))
            if self.cuts is not None:
                self.cuts.inc()


class _BatchSlots:
    """The chunk run's holding of its batch's max_concurrent slots."""

    def __init__(
        self,
        store: BatchStore,
        claimed: ClaimedChunk,
        limit: int,
        queued: Callable[[], int],
        log: structlog.typing.FilteringBoundLogger,
        on_batch_state: Callable[[BatchState | None], None] = lambda state: None,
    ) -> None:
        self.store = store
        self.claimed = claimed
        self.on_batch_state = on_batch_state
        self.limit = limit
        self.queued = queued
        self.log = log
        self.held = 0
        self.in_use = 0
        self.waiting = 0
        self._lock = asyncio.Lock()

    async def acquire(self, halted: Halted, want: int = 1) -> bool:
        """One slot; `want`: how many to ask Redis for on this caller's behalf."""
        self.waiting += want
        try:
            while True:
                if self.in_use < self.held:
                    self.in_use += 1
                    return True
                if halted():
                    return False
                async with self._lock:
                    if self.in_use < self.held:
                        continue
                    await self._hold(self.in_use + self.waiting)
                if self.in_use >= self.held:
                    await _sleep(SLOT_POLL * random.uniform(0.5, 1.5), halted)
        finally:
            self.waiting -= want

    async def release(self) -> None:
        self.in_use -= 1
        if self._surplus():
            # Nothing left here to start: give it to the batch's other holders.
            async with self._lock:
                if self._surplus():
                    await self._hold(self.in_use)

    def _surplus(self) -> bool:
        return self.held > self.in_use + self.waiting and self.queued() == 0

    async def _hold(self, count: int) -> None:
        c = self.claimed
        if count < self.held:
            # Giving back: stop using those slots before Redis hands them to others.
            self.held = count
        try:
            held, state = await self.store.hold_slots(
                c.batch_id, c.chunk, c.token, count, limit=self.limit
            )
        except Exception:
            self.log.warning("concurrency_slots_failed", exc_info=True)
            return
        self.on_batch_state(state)
        # What Redis says we hold, whatever runs: below in_use (a lost claim says 0) no
        # more starts until enough have ended.
        self.held = held


async def _sleep(seconds: float, halted: Halted) -> None:
    """Sleeps `seconds`, or less if the chunk halts meanwhile."""
    end = time.monotonic() + seconds
    # `halted` is a condition over several objects, not an event to wait for.
    while (left := end - time.monotonic()) > 0 and not halted():  # noqa: ASYNC110
        await asyncio.sleep(min(left, HALT_CHECK))
