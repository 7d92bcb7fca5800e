"""Completion windows: deadlines, expiry of unfinished items, late workers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from batchd.core.domain import BatchRecord, BatchState, ItemCounts, ItemOutcome, ItemState
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Consistent = Callable[[str], Awaitable[ItemCounts]]
Advance = Callable[[float], float]

LEASE = 5.0
WINDOW = 60.0
OK, FAILED, EXPIRED = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.EXPIRED
PENDING, RUNNING = ItemState.PENDING, ItemState.RUNNING


def done(index: int, state: ItemState = OK) -> ItemOutcome:
    return ItemOutcome(index=index, state=state, attempts=1, start_time=None, end_time=None)


def retry(index: int, at: float) -> ItemOutcome:
    return ItemOutcome(
        index=index,
        state=PENDING,
        attempts=2,
        start_time=None,
        end_time=None,
        error_code=4,
        error_message="too slow",
        retry_at=at,
    )


def ms(seconds: float) -> int:
    return round(seconds * 1000)


async def test_the_deadline_is_filed_at_commit(
    store: BatchStore, redis: Redis, new_batch: NewBatch
) -> None:
    batch = await new_batch(3, completion_window=WINDOW)
    deadline = ms(batch.create_time + WINDOW)
    meta = store.keys.meta(batch.batch_id)
    assert await redis.hget(meta, "deadline") == str(deadline).encode()  # type: ignore[misc]
    assert await redis.zscore(store.keys.deadlines, batch.batch_id) == deadline
    unbounded = await new_batch(3)  # no window: filed as open, never due
    assert await redis.zscore(store.keys.deadlines, unbounded.batch_id) == float("inf")
    assert await store.expire_batches(store.clock() + 10 * WINDOW) == 1


async def test_a_closed_window_expires_every_unfinished_item(
    store: BatchStore,
    redis: Redis,
    new_batch: NewBatch,
    consistent: Consistent,
    advance: Advance,
) -> None:
    batch = await new_batch(9, chunk_size=3, completion_window=WINDOW)
    bid = batch.batch_id
    # Chunk 0: one item ends, one waits for a retry, one runs. Chunk 1: queued.
    # Chunk 2: one FAILED, the rest handed back by its release.
    running = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    handed = await store.claim_chunk(bid, 2, lease_ttl=LEASE)
    assert running is not None
    assert handed is not None
    later = store.clock() + 2 * WINDOW
    await store.record_outcomes(
        bid, 0, [done(0), retry(1, later)], token=running.token, release=False
    )
    await store.record_outcomes(bid, 2, [done(6, FAILED)], token=handed.token, release=True)
    assert await consistent(bid) == ItemCounts(pending=6, running=1, succeeded=1, failed=1)

    assert await store.expire_batches(store.clock()) == 0  # not yet
    now = advance(WINDOW)
    assert await store.expire_batches(now) == 1
    assert await store.expire_batches(now) == 0  # once only, wherever it runs

    expired = await store.get_batch(bid)
    assert expired.state is BatchState.COMPLETED
    assert expired.end_time == now
    assert await consistent(bid) == ItemCounts(succeeded=1, failed=1, expired=7)
    assert await redis.zscore(store.keys.deadlines, bid) is None
    assert await redis.zscore(store.keys.leases, f"{bid}/0") is None
    items, _ = await store.list_items(bid, 9, "", [EXPIRED])
    assert [i.index for i in items] == [1, 2, 3, 4, 5, 7, 8]
    assert (items[0].attempts, items[0].error_message, items[0].end_time) == (2, "too slow", now)

    # The late worker: its claim is lost, its records and release change nothing.
    assert await store.renew_leases([(bid, 0, running.token, 0)], LEASE) == [None]
    result = await store.record_outcomes(bid, 0, [done(2)], token=running.token, release=True)
    assert (result.state, result.held) == (BatchState.COMPLETED, False)
    assert await consistent(bid) == ItemCounts(succeeded=1, failed=1, expired=7)
    assert all([await store.claim_chunk(bid, n, lease_ttl=LEASE) is None for n in range(3)])


async def test_a_cancelling_batch_that_expires_ends_cancelled(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await new_batch(6, chunk_size=3, completion_window=WINDOW)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    assert (await store.cancel_batch(bid)).state is BatchState.CANCELLING
    assert await store.expire_batches(advance(WINDOW)) == 1
    assert (await store.get_batch(bid)).state is BatchState.CANCELLED
    assert await consistent(bid) == ItemCounts(cancelled=3, expired=3)
