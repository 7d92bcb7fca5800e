"""`run_chunk`: the ARQ job that runs one chunk of a batch (docs/design.md, "Workers"
and "Reliability").

The job claims the chunk under a lease (renewed by the process's `LeaseKeeper`), runs
its items through consumer coroutines fed by a queue — never one task per item — and
records outcomes in blocks through a `Recorder`, releasing the chunk with the last
flush. A worker-wide semaphore bounds the items in flight across the process's chunk
jobs. A job whose chunk ran quickly goes on with the batch's next undispatched chunk
(`CHAIN_MAX`).

Every way a run ends is one release, which hands back (or, in a cancelling batch,
cancels) what it leaves unrecorded — except a lost lease, when the chunk is no longer
ours to release. A run stops starting items when the batch is cancelling or paused,
the worker drains, or the lease is lost; while the lease is stale (renewals fail) it
waits, and abandons the attempts in flight (cancels them, their items back in its
queue) so that they never run beside a new holder's (batchd.worker.leases). Otherwise
items already in flight finish and are recorded (a drain waits for them up to its grace
period; those cut short run again). Each item gets one attempt per run; a
retry is a deferred job written by the store, so no job sleeps. Nothing a handler does
can crash the worker: every exception becomes a FAILED item.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from batchd.core.config import Settings
from batchd.core.domain import ClaimedChunk, ItemOutcome
from batchd.core.errors import NotFound
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.worker.arq_worker import run_later
from batchd.worker.attempts import Item, OnBlockSlowDown, OnSlowDown, run_block, run_item
from batchd.worker.fifo_semaphore import FifoSemaphore
from batchd.worker.flow_gate import Admission, FlowGate, PermitPool
from batchd.worker.handler import Handler, SlowDown
from batchd.worker.leases import Lease, LeaseKeeper
from batchd.worker.metrics import WorkerMetrics
from batchd.worker.recorder import FlushFailed, Recorder

if TYPE_CHECKING:
    import structlog

    from batchd.core.otel import Tracing

__all__ = ["CTX_KEY", "ChunkEnd", "WorkerRuntime", "run_chunk"]

log = get_logger(__name__)

# Where the worker's runtime sits in ARQ's per-worker ctx dict.
CTX_KEY: Final = "batchd"
# A consumer lets the loop run others after this many items, in case they never waited
# (a no-op runs 64 in well under a millisecond).
YIELD_EVERY = 64
# After a Redis error before the claim the job is run again this long later.
STORE_ERROR_DEFER = 2.0
# After its claim was found lost the job is run again this long later (see run_chunk).
LOST_CLAIM_RECHECK = 0.5
# A chunk job whose chunk ran in under CHAIN_WITHIN seconds goes on with the batch's next
# chunk not yet dispatched, up to CHAIN_MAX more: for cheap items a job's queue round
# trip (about 20 Redis commands and a task) costs as much as its chunk, and a batch's
# chunks are then taken without one. Bounded, so that other batches' jobs waiting for a
# job slot wait at most CHAIN_MAX quick chunks longer; slow chunks gain nothing from it.
CHAIN_MAX = 7
CHAIN_WITHIN = 1.0


@dataclass
class WorkerRuntime:
    """What every chunk job of a worker process shares; built by the startup hook."""

    settings: Settings
    store: BatchStore
    handlers: Mapping[str, Handler]
    worker_id: str
    # Items in flight across every chunk job of the process.
    in_flight: FifoSemaphore
    # Set when the worker is asked to stop: chunks start no more items and are handed
    # back, for another worker, with what they have not started.
    draining: asyncio.Event
    leases: LeaseKeeper
    # Rate-limit permits, shared by the process's chunk runs (batchd.worker.flow_gate).
    permits: PermitPool = field(default_factory=PermitPool)
    # The worker's Prometheus metrics; None when it serves none (worker_metrics_port 0).
    metrics: WorkerMetrics | None = None
    # None: no spans. Decided per chunk run, never per item (the no-op path pays nothing).
    tracing: Tracing | None = None
    # The chunk runs in progress, oldest first (a dict as an ordered set): where a slot
    # left free by a run out of items goes (`_ChunkRun._hand_on_slots`).
    runs: dict[_ChunkRun, None] = field(default_factory=dict)


class ChunkEnd(enum.Enum):
    DONE = "done"  # every item handed out has an outcome (or a retry); released
    CANCELLED = "cancelled"  # the batch is being cancelled: released, the rest cancelled
    HANDED_BACK = "handed_back"  # the worker drains: released, the rest for another worker
    LOST = "lost"  # the lease is lost or the batch gone: the rest is not ours


async def run_chunk(ctx: dict[Any, Any], batch_id: str, chunk: int) -> None:
    """ARQ job: run what is left of chunk `chunk` of batch `batch_id`. It comes from the
    queue of the batch's handler, which this worker serves."""
    runtime: WorkerRuntime = ctx[CTX_KEY]
    store = runtime.store
    try:
        claimed_at, claimed_ns = time.monotonic(), time.time_ns()
        claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=runtime.settings.lease_ttl)
    except NotFound:
        claimed = None
    except Exception as exc:
        log.warning("chunk_claim_failed", batch_id=batch_id, chunk=chunk, exc_info=True)
        raise run_later(STORE_ERROR_DEFER) from exc
    if claimed is None:  # done, cancelled, gone, or held by another live worker
        log.debug("chunk_skipped", batch_id=batch_id, chunk=chunk)
        return
    # Only a job put by hand in another handler's queue finds no handler: its items fail
    # UNIMPLEMENTED (batchd.worker.attempts).
    handler = runtime.handlers.get(claimed.handler)
    metrics = runtime.metrics
    for taken in range(1 + CHAIN_MAX):
        if metrics is not None:
            metrics.chunks_claimed.labels(claimed.handler).inc()
        lease = runtime.leases.hold(claimed, claimed_at)
        try:
            if runtime.tracing is None:
                end = await _ChunkRun(runtime, claimed, handler, lease).run()
            else:
                end = await _traced_run(
                    runtime.tracing, claimed_ns, runtime, claimed, handler, lease
                )
        except FlushFailed as exc:
            # Not an outage (those are waited out): a script or codec error. The lease
            # expires and the chunk is taken over; this job, too, is run again.
            raise run_later(STORE_ERROR_DEFER) from exc
        finally:
            runtime.leases.drop(lease)
        if end is ChunkEnd.LOST and taken == 0:
            # The claim this job made is lost: most often the chunk was taken over, but a
            # Redis failover can lose the claim itself, leaving the chunk queued with this
            # job its only way to run. The job runs again; its claim finds out which.
            raise run_later(LOST_CLAIM_RECHECK)
        if (
            end is not ChunkEnd.DONE
            or handler is None
            or taken == CHAIN_MAX
            or time.monotonic() - claimed_at > CHAIN_WITHIN
            or runtime.draining.is_set()
        ):
            return
        # A quick chunk: take the batch's next one straight away (see CHAIN_MAX).
        claimed_at, claimed_ns = time.monotonic(), time.time_ns()
        try:
            next_claim = await store.claim_next_chunk(
                batch_id, lease_ttl=runtime.settings.lease_ttl, handlers=list(runtime.handlers)
            )
        except Exception:
            # Had the claim gone through, its lease lapses and the chunk is taken over.
            log.warning("chunk_next_claim_failed", batch_id=batch_id, exc_info=True)
            return
        if next_claim is None:  # every chunk dispatched, or the batch not running
            return
        claimed = next_claim


async def _traced_run(
    tracing: Tracing,
    claimed_ns: int,
    runtime: WorkerRuntime,
    claimed: ClaimedChunk,
    handler: Handler | None,
    lease: Lease,
) -> ChunkEnd:
    """The run inside its span, which its items' spans are children of (the consumers
    start inside it, so they inherit it as their current span)."""
    with tracing.chunk_span(claimed, claimed_ns, runtime.worker_id) as span:
        # A chunk run its batch's sampling left out records nothing: its items get no
        # span either.
        items_traced = tracing if span.is_recording() else None
        end = await _ChunkRun(runtime, claimed, handler, lease, items_traced).run()
        span.set_attribute("batchd.chunk.end", end.value)
        return end


async def _traced_block(
    tracing: Tracing,
    handler: Handler,
    claimed: ClaimedChunk,
    items: list[Item],
    log: structlog.typing.FilteringBoundLogger,
    *,
    on_slow_down: OnBlockSlowDown | None = None,
) -> list[ItemOutcome]:
    """`run_block` inside the block's span."""
    scope, outcomes = tracing.start_block(claimed, len(items)), None
    try:
        outcomes = await run_block(handler, claimed, items, log, on_slow_down=on_slow_down)
        return outcomes
    finally:
        tracing.end_block(scope, outcomes)


async def _traced_item(
    tracing: Tracing,
    handler: Handler | None,
    claimed: ClaimedChunk,
    item: Item,
    log: structlog.typing.FilteringBoundLogger,
    *,
    on_slow_down: OnSlowDown | None = None,
) -> ItemOutcome:
    """`run_item` inside the attempt's span."""
    scope, outcome = tracing.start_item(claimed, item), None
    try:
        outcome = await run_item(handler, claimed, item, log, on_slow_down=on_slow_down)
        return outcome
    finally:
        tracing.end_item(scope, outcome)


class _ChunkRun:
    """One run of one chunk job."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        claimed: ClaimedChunk,
        handler: Handler | None,
        lease: Lease,
        tracing: Tracing | None = None,
    ) -> None:
        self.runtime = runtime
        self.claimed = claimed
        self.handler = handler
        self.lease = lease
        self.log = log.bind(batch_id=claimed.batch_id, chunk=claimed.chunk)
        # Chosen once per run: untraced, items run with nothing around them.
        self._run_item: Callable[..., Awaitable[ItemOutcome]] = (
            run_item if tracing is None else partial(_traced_item, tracing)
        )
        self._run_block: Callable[..., Awaitable[list[ItemOutcome]]] = (
            run_block if tracing is None else partial(_traced_block, tracing)
        )
        # Items per handler call: above 1 only for a handler with run_many (a batch
        # stored before block_size existed says 0: its handler's default).
        self.block_size = 1
        if handler is not None and handler.run_many is not None:
            self.block_size = min(
                claimed.options.block_size or handler.block_size, len(claimed.items) or 1
            )
        # Items not started yet (consumers never wait on it: a plain deque).
        self.queue: deque[Item] = deque()
        metrics = runtime.metrics
        self.recorder = Recorder(
            runtime.store,
            claimed,
            runtime.settings,
            self.log,
            lease,
            tally=metrics.tally(claimed.handler) if metrics else None,
            outages=metrics.outages if metrics else None,
        )
        # Consumers, started as needed up to _pool_size: a handler that never waits
        # needs one or two, and a full pool of tasks per chunk would cost a run of cheap
        # items more than its items do. A consumer whose run is out of items goes on to
        # another run's (`_serve`). `_members` are those serving this run now, `_idle`
        # those of them not running an item; the run ends once none is left (`_all_left`).
        self._members: set[asyncio.Task[None]] = set()
        self._all_left = asyncio.Event()
        self._failure: BaseException | None = None  # a consumer's, raised by `run`
        self._pool_size = 0
        self._started = 0
        self._idle = 0
        self._fresh = 0  # started and not yet run (`_unclaimed_slots`)
        self._task: asyncio.Task[Any] | None = None  # the job's, which runs the run
        # Consumers running an item, and those of them told to abandon it (the lease
        # went stale: `_abandon_when_stale`).
        self._running: set[asyncio.Task[Any]] = set()
        self._abandoning: set[asyncio.Task[Any]] = set()
        self.abandoned = 0
        self.gate = FlowGate(
            runtime.store,
            claimed,
            handler,
            runtime.in_flight,
            runtime.permits,
            self.queue.__len__,
            self.log,
            lease.learn,
        )

    async def run(self) -> ChunkEnd:
        claimed, started = self.claimed, time.monotonic()
        self.queue.extend(claimed.items)
        pool = min(len(claimed.items), max(self.runtime.settings.worker_concurrency, 1))
        if claimed.options.max_concurrent > 0:  # more consumers could only wait for slots
            pool = min(pool, claimed.options.max_concurrent)
        if self.block_size > 1:  # each consumer runs up to a block of items at once
            pool = -(-pool // self.block_size)
        self.log.debug(
            "chunk_claimed", handler=claimed.handler, items=len(claimed.items), max_consumers=pool
        )
        self.recorder.start()
        self._pool_size = pool
        runs, self._task = self.runtime.runs, asyncio.current_task()
        watchdog = asyncio.create_task(self._abandon_when_stale(), name="lease watchdog")
        try:
            self._spawn(1)  # grows as its items wait (`_grow`)
            runs[self] = None
            await self._all_left.wait()
            if self._failure is not None:
                raise self._failure
        except BaseException:
            watchdog.cancel()
            await self._stop_members()
            # Cancelled (the worker is stopping) or broken: record what is done and hand
            # the rest back, items cut short in flight included (they run again).
            self._count_end("interrupted", len(self.queue))
            try:
                await asyncio.shield(self.recorder.stop(release=self._ours()))
            except FlushFailed:
                self.log.warning("outcome_flush_failed", exc_info=True)
            self.log.debug("chunk_interrupted", **self.recorder.count_fields())
            raise
        finally:
            runs.pop(self, None)
        watchdog.cancel()
        not_started = self._not_started()
        end = await self._finish(not_started)
        self._count_end(end.value, len(not_started) if end is ChunkEnd.HANDED_BACK else 0)
        self.log.debug(
            f"chunk_{end.value}",
            state=self.recorder.batch_state.name if self.recorder.batch_state else None,
            duration=round(time.monotonic() - started, 3),
            **self.recorder.count_fields(),
        )
        return end

    async def _finish(self, not_started: list[Item]) -> ChunkEnd:
        recorder = self.recorder
        # Lost: the items that finished in flight are recorded (first writer wins); the
        # rest belongs to whoever holds the chunk now.
        release = self._ours()
        if release:
            # No renewal from here on: one that reached Redis after the release would
            # answer "not held" before the release's own answer came, and the chunk
            # would be taken for lost. The release's answer says whether it held.
            self.runtime.leases.drop(self.lease)
        await recorder.stop(release=release)
        if not self._ours():
            return ChunkEnd.LOST
        if not not_started:
            return ChunkEnd.DONE
        return ChunkEnd.CANCELLED if recorder.cancelling else ChunkEnd.HANDED_BACK

    def _count_end(self, end: str, handed_back: int) -> None:
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.chunks_ended.labels(self.claimed.handler, end).inc()
            if handed_back:
                metrics.items_handed_back.labels(self.claimed.handler).inc(handed_back)

    def _ours(self) -> bool:
        """The claim still holds, as far as this worker knows."""
        return not (self.lease.lost.is_set() or self.recorder.lost or self.recorder.gone)

    # -- consumers -------------------------------------------------------------------
    def _spawn(self, count: int) -> int:
        """Starts up to `count` more consumers (never more than `_pool_size` live): how
        many it started."""
        count = max(min(count, self._pool_size - len(self._members)), 0)
        for _ in range(count):
            self._started += 1
            self._fresh += 1
            consumer = _Consumer(self)
            task = asyncio.create_task(self._serve(consumer), name=f"consumer {self._started}")
            # However it ends (cancelled before it ever ran, say), it leaves its run.
            task.add_done_callback(consumer.leave)
            self._join(task)
        return count

    def _join(self, consumer: asyncio.Task[None]) -> None:
        self._members.add(consumer)
        self._idle += 1

    def _leave(self, consumer: asyncio.Task[None]) -> None:
        self._members.discard(consumer)
        self._idle -= 1
        if not self._members:
            self._all_left.set()

    async def _serve(self, consumer: _Consumer) -> None:
        """A consumer's life: this run's items, then, while another run has items waiting
        for consumers, that run's (`_next_run`), and so on: a slot this run no longer
        needs goes on with the consumer holding it, not to a task started for it. A
        consumer's failure (a bug: handlers' errors are outcomes) ends its run, as in a
        task group: the run's other consumers are cancelled and `run` raises it."""
        me = asyncio.current_task()
        assert me is not None
        consumer.arrive()
        run = self
        while True:
            try:
                if not consumer.started:  # gone on to `run`: starts with the next loop pass
                    await asyncio.sleep(0)
                    consumer.arrive()
                await (run._consume(me) if run.block_size == 1 else run._consume_blocks(me))
            except asyncio.CancelledError:
                consumer.leave(me)
                raise
            except BaseException as exc:
                run._fail(exc, me)
                consumer.leave(me)
                if not isinstance(exc, Exception):
                    raise
                return
            after = run._next_run()
            consumer.leave(me)
            if after is None:
                if not run.queue:
                    run._hand_on_slots()
                return
            after._join(me)
            # It starts there with the loop's next pass, as a task started for it would,
            # counted meanwhile as started and not yet run (`_unclaimed_slots`). Going on
            # at once, each consumer sent its next request as it read its last response,
            # one by one between the handling of the others', and a downstream woke for
            # each; consumers going on together send theirs together.
            after._fresh += 1
            consumer.started = False
            consumer.run = run = after

    def _next_run(self) -> _ChunkRun | None:
        """The run a consumer of this one, out of items, goes on to: the oldest with more
        items waiting than idle consumers and fewer consumers than its pool may have (its
        batch's max_concurrent), if both take one item per call, and no run has a span
        its consumers' items must be children of."""
        if (
            self.block_size != 1
            or self.runtime.tracing is not None
            or self.queue
            or self.runtime.in_flight.free <= 0  # its slot went to a consumer in line
        ):
            return None
        for run in self.runtime.runs:
            if (
                run is not self
                and run.block_size == 1
                and len(run.queue) > run._idle
                and len(run._members) < run._pool_size
                and run._takes_consumers()
            ):
                return run
        return None

    def _fail(self, exc: BaseException, consumer: asyncio.Task[None]) -> None:
        if self._failure is None:
            self._failure = exc
        for other in self._members:
            if other is not consumer:
                other.cancel()

    async def _stop_members(self) -> None:
        """Cancels the consumers serving this run and waits for them to leave."""
        for consumer in list(self._members):
            consumer.cancel()
        if self._members:
            await self._all_left.wait()

    def _grow(self) -> None:
        """Called as a consumer starts an item while every consumer runs one and items
        wait: doubles the consumers, up to the free worker slots (a 500-slot worker
        fills them in 9 steps) that no consumer started and not yet run will take."""
        free = self._unclaimed_slots()
        if free > 0:
            self._spawn(min(self._started, -(-free // self.block_size)))

    def _unclaimed_slots(self) -> int:
        """Free worker slots less the consumers of every run started and not yet run,
        each of which takes one as it first runs: what a new consumer could run with at
        once. A consumer more than that waits in the slots' line, and then every slot
        freed goes to a waiter, every consumer that freed one waiting in turn: a
        hand-over and a wait per item where, with no waiters, a consumer takes back its
        own slot."""
        free = self.runtime.in_flight.free
        if free <= 0:
            return 0
        return free - sum(run._fresh for run in self.runtime.runs)

    def _hand_on_slots(self) -> None:
        """Called as a consumer leaves for want of items: the worker slots left free,
        which nobody waits for, go to other runs' queued items now (oldest run first),
        not when one of their consumers next starts an item and grows its pool."""
        free = self._unclaimed_slots()
        if free <= 0:
            return
        for run in self.runtime.runs:
            if run is self or not run._takes_consumers():
                continue
            size = run.block_size  # a consumer of blocks starts up to this many items
            started = run._spawn(min(-(-free // size), -(-len(run.queue) // size) - run._idle))
            free -= started * size
            if free <= 0:
                return

    async def _consume(self, me: asyncio.Task[None]) -> None:
        # Locals: this loop runs once per item, so its lookups are kept off `self`.
        queue, gate, recorder, lease = self.queue, self.gate, self.recorder, self.lease
        handler, claimed, log, run = self.handler, self.claimed, self.log, self._run_item
        running, abandoning = self._running, self._abandoning
        since_yield = 0
        while True:
            # A handler that never awaits would otherwise starve flushes and renewals;
            # yielding after every item would slow such handlers down, hence a block.
            if since_yield >= YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            if not queue:  # out of items (what `_stops_starting` would say first)
                break
            if (self._stops_starting() or not lease.live) and not await self._may_start():
                break
            item = queue.popleft()
            admission = gate.admit_now(item)
            if admission is None:
                if gate.flow_limited(item):
                    # All of the pool waits: how many wait is what one Redis call for
                    # permits or slots asks for.
                    self._spawn(self._pool_size)
                # Flow limits (batchd.worker.flow_gate), then the worker-wide slot.
                admission = await gate.admit(item, self._halted)
                if admission is None or self._halted():
                    if admission is not None:
                        await gate.done(admission)
                    queue.appendleft(item)  # not started: back for the next look
                    continue  # things changed while waiting for a slot: look again
            self._idle -= 1
            lease.in_flight += 1  # items started and not ended
            if self._idle == 0 and queue:
                self._grow()
            outcome: ItemOutcome | None = None
            running.add(me)
            try:
                outcome = await run(handler, claimed, item, log, on_slow_down=admission.slow_down)
            except asyncio.CancelledError:
                if me not in abandoning or me.cancelling() > 1:
                    raise  # the job is cancelled (as well): the run ends
            finally:
                running.discard(me)
                if me in abandoning:
                    # Told to abandon the attempt (even one that ended meanwhile): its item
                    # waits in the queue for the lease's fate.
                    abandoning.discard(me)
                    me.uncancel()
                    outcome = None
                    queue.appendleft(item)
                    self.abandoned += 1
                self._idle += 1
                lease.in_flight -= 1
                if gate.batch_slots is None:
                    gate.done_now(admission)
                else:
                    await gate.done(admission)
            if outcome is None:
                continue
            recorder.add_one(outcome, last=not lease.in_flight and not queue)
            since_yield += 1

    def _takes_consumers(self) -> bool:
        """Another run may start or send consumers here: items wait, and it has consumers
        (it ends once the last has left) and its job is not cancelled."""
        task = self._task
        return (
            len(self._members) > 0
            and task is not None
            and not task.cancelling()
            and not self._stops_starting()
        )

    async def _consume_blocks(self, me: asyncio.Task[None]) -> None:
        """`_consume` for a handler taking blocks: starts up to `block_size` items in one
        `run_many` call. The first item is admitted as in `_consume` (waiting if need
        be, Redis asked for a block's worth); the others only with what is at hand, so a
        block starts smaller rather than wait."""
        queue, gate, recorder, lease = self.queue, self.gate, self.recorder, self.lease
        handler, claimed, log, size = self.handler, self.claimed, self.log, self.block_size
        running, abandoning = self._running, self._abandoning
        assert handler is not None
        since_yield = 0
        while True:
            if since_yield >= YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            if not queue:  # out of items (what `_stops_starting` would say first)
                break
            if (self._stops_starting() or not lease.live) and not await self._may_start():
                break
            item = queue.popleft()
            admission = gate.admit_now(item)
            if admission is None:
                if gate.flow_limited(item):
                    self._spawn(self._pool_size)
                admission = await gate.admit(item, self._halted, want=size)
                if admission is None or self._halted():
                    gate.block_formed()
                    if admission is not None:
                        await gate.done(admission)
                    queue.appendleft(item)
                    continue
            items, admissions = [item], [admission]
            while len(items) < size and queue:
                more = gate.admit_more(queue[0])
                if more is None:
                    break
                items.append(queue.popleft())
                admissions.append(more)
            gate.block_formed()
            count = len(items)
            self._idle -= 1
            lease.in_flight += count
            if self._idle == 0 and queue:
                self._grow()
            outcomes: list[ItemOutcome] | None = None
            running.add(me)
            try:
                outcomes = await self._run_block(
                    handler, claimed, items, log, on_slow_down=_BlockSlowDown(admissions)
                )
            except asyncio.CancelledError:
                if me not in abandoning or me.cancelling() > 1:
                    raise  # the job is cancelled (as well): the run ends
            finally:
                running.discard(me)
                if me in abandoning:  # as in `_consume`: the block waits in the queue
                    abandoning.discard(me)
                    me.uncancel()
                    outcomes = None
                    queue.extendleft(reversed(items))
                    self.abandoned += count
                self._idle += 1
                lease.in_flight -= count
                for admission in admissions:
                    if gate.batch_slots is None:
                        gate.done_now(admission)
                    else:
                        await gate.done(admission)
            if outcomes is None:
                continue
            last = not lease.in_flight and not queue
            for position, outcome in enumerate(outcomes, 1 - count):
                recorder.add_one(outcome, last=last and position == 0)
            since_yield += count

    def _stops_starting(self, holding: bool = False) -> bool:
        """`holding`: asked by a consumer holding an item it took out of the queue."""
        return (
            self.recorder.stops_starting
            or self.lease.halted
            or self.lease.lost.is_set()
            or self.runtime.draining.is_set()
            or (not self.queue and not holding)
        )

    def _halted(self) -> bool:
        """A consumer's item, taken out of the queue, may not start now."""
        return self._stops_starting(holding=True) or not self.lease.live

    async def _may_start(self) -> bool:
        """True once an item may start; False when this consumer should end."""
        while not self._stops_starting():
            if self.lease.live:
                return True
            # Stale: renewals fail (Redis is away). Wait for news of the lease or a drain.
            self.log.debug("lease_stale_waiting")
            await _first_of(self.lease.wait_changed(), self.runtime.draining.wait())
        return False

    async def _abandon_when_stale(self) -> None:
        """Cancels the attempts in flight whenever the lease goes stale: by then another
        worker may take the chunk over within a tenth of the lease (batchd.worker.leases).
        Runs beside the consumers until the run ends."""
        lease = self.lease
        while not lease.lost.is_set():
            wait = lease.live_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # renewals move live_until on: look again
                continue
            targets = self._running - self._abandoning
            if targets:
                self.log.warning("lease_stale_abandoning", items=len(targets))
                for task in targets:
                    self._abandoning.add(task)
                    task.cancel()
            await lease.wait_changed()

    def _not_started(self) -> list[Item]:
        left = list(self.queue)
        self.queue.clear()
        return left


class _Consumer:
    """Which run a consumer task serves now (None once it left the last), and whether it
    has run there (a consumer gone on to a run starts there with the next loop pass)."""

    __slots__ = ("run", "started")

    def __init__(self, run: _ChunkRun) -> None:
        self.run: _ChunkRun | None = run
        self.started = False

    def leave(self, task: asyncio.Task[None]) -> None:
        run = self.run
        if run is None:
            return
        if not self.started:  # cancelled before it ran there: its start no longer pending
            self.arrive()
        self.run = None
        run._leave(task)

    def arrive(self) -> None:
        """It runs in its run now: no longer one started and not yet run."""
        assert self.run is not None
        self.started = True
        self.run._fresh -= 1


class _BlockSlowDown:
    """Tells a block's admissions of the SlowDowns its items met: each item's admission
    is marked, each distinct bucket list cut once per block."""

    def __init__(self, admissions: list[Admission]) -> None:
        self.admissions = admissions
        self.cut: set[int] = set()

    async def __call__(self, position: int, exc: SlowDown, started: float) -> None:
        admission = self.admissions[position]
        if id(admission.permits) in self.cut:
            admission.slowed = True
            return
        self.cut.add(id(admission.permits))
        await admission.slow_down(exc, started)


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Returns as soon as one of `waits` is done; cancels the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
