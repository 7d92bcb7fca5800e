"""Retries as deferred jobs: waiting items, their jobs, their claims, and cancels."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from batchd.core import jobs
from batchd.core.domain import BatchRecord, BatchState, ItemCounts, ItemOutcome, ItemState
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Consistent = Callable[[str], Awaitable[ItemCounts]]
Advance = Callable[[float], float]

LEASE = 60.0
OK, FAILED, CANCELLED = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED


def done(index: int, state: ItemState = OK, attempts: int = 1) -> ItemOutcome:
    return ItemOutcome(index=index, state=state, attempts=attempts, start_time=None, end_time=None)


def retry(index: int, at: float, attempts: int = 1) -> ItemOutcome:
    return ItemOutcome(
        index=index,
        state=ItemState.PENDING,
        attempts=attempts,
        start_time=at - 30,
        end_time=at - 29,
        error_code=14,
        error_message=f"unavailable, attempt {attempts}",
        retry_at=at,
    )


def ms(seconds: float) -> int:
    return round(seconds * 1000)


async def test_a_retry_waits_for_its_deferred_job(
    store: BatchStore,
    redis: Redis,
    new_batch: NewBatch,
    consistent: Consistent,
    advance: Advance,
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    due = store.clock() + 30

    result = await store.record_outcomes(
        bid, 0, [retry(0, due)], token=claimed.token, release=False
    )
    assert (result.state, result.next_retry_at, result.held) == (BatchState.RUNNING, due, True)
    assert await consistent(bid) == ItemCounts(pending=1, running=2)
    items, _ = await store.list_items(bid, 1, "", [])
    assert (items[0].state, items[0].attempts, items[0].next_attempt_time) == (
        ItemState.PENDING,
        1,
        due,
    )
    assert (items[0].error_code, items[0].error_message) == (14, "unavailable, attempt 1")

    # The deferred job is in the queue at the due time, as enqueue_job would write it.
    job_id = f"{bid}:0:t{ms(due)}"
    assert await redis.zscore(store.keys.queue("test.echo"), job_id) == ms(due)
    expected = jobs.chunk_job(job_id, bid, 0, now_ms=ms(store.clock()), defer_until_ms=ms(due))
    assert await redis.get(expected.key) == expected.payload
    ttl = await redis.pttl(expected.key)
    assert expected.expires_ms - 1000 < ttl <= expected.expires_ms

    # The same retry flushed twice waits once.
    await store.record_outcomes(bid, 0, [retry(0, due + 5)], token=claimed.token, release=False)
    assert await consistent(bid) == ItemCounts(pending=1, running=2)

    # The holder finishes the rest and releases: the chunk is done but its retry waits.
    result = await store.record_outcomes(
        bid, 0, [done(1), done(2)], token=claimed.token, release=True
    )
    assert result.next_retry_at == due
    assert await consistent(bid) == ItemCounts(pending=1, succeeded=2)
    assert await store.claim_chunk(bid, 0, lease_ttl=LEASE) is None  # not due yet
    assert await redis.zscore(store.keys.queue("test.echo"), job_id) == ms(due)  # still scheduled
    assert await consistent(bid) == ItemCounts(pending=1, succeeded=2)

    advance(30)
    again = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert again is not None
    assert [index for index, _, _ in again.items] == [0]
    assert again.attempts == {0: 1}
    assert await consistent(bid) == ItemCounts(running=1, succeeded=2)
    result = await store.record_outcomes(
        bid, 0, [done(0, attempts=2)], token=again.token, release=True
    )
    assert (result.state, result.next_retry_at) == (BatchState.COMPLETED, None)
    assert await consistent(bid) == ItemCounts(succeeded=3)
    items, _ = await store.list_items(bid, 1, "", [])
    assert (items[0].state, items[0].attempts, items[0].next_attempt_time) == (OK, 2, None)


async def test_a_claim_that_leaves_retries_schedules_the_next_one(
    store: BatchStore,
    redis: Redis,
    new_batch: NewBatch,
    consistent: Consistent,
    advance: Advance,
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    now = store.clock()
    outcomes = [retry(0, now + 10), retry(1, now + 20, attempts=3), done(2, FAILED)]
    await store.record_outcomes(bid, 0, outcomes, token=claimed.token, release=True)
    assert await consistent(bid) == ItemCounts(pending=2, failed=1)

    advance(10)
    first = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert first is not None
    assert [index for index, _, _ in first.items] == [0]
    # Its release schedules the job of the one still waiting.
    result = await store.record_outcomes(bid, 0, [done(0)], token=first.token, release=True)
    assert result.next_retry_at == now + 20
    assert await redis.zscore(store.keys.queue("test.echo"), f"{bid}:0:t{ms(now + 20)}") == ms(
        now + 20
    )

    advance(10)
    second = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert second is not None
    assert (second.items[0][0], second.attempts) == (1, {1: 3})
    assert await consistent(bid) == ItemCounts(running=1, succeeded=1, failed=1)


async def test_a_retry_recorded_by_a_stale_holder_is_counted_once(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    stale = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert stale is not None
    advance(LEASE)
    fresh = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert fresh is not None
    assert await consistent(bid) == ItemCounts(running=3)

    # The stale holder's attempt failed: the item waits (no longer running) ...
    due = store.clock() + 30
    await store.record_outcomes(bid, 0, [retry(1, due)], token=stale.token, release=False)
    assert await consistent(bid) == ItemCounts(pending=1, running=2)
    # ... while the new holder's run of it succeeds: it ends, counted once.
    await store.record_outcomes(bid, 0, [done(1)], token=fresh.token, release=False)
    assert await consistent(bid) == ItemCounts(running=2, succeeded=1)
    await store.record_outcomes(bid, 0, [done(0), done(2)], token=fresh.token, release=True)
    assert await consistent(bid) == ItemCounts(succeeded=3)
    assert (await store.get_batch(bid)).state is BatchState.COMPLETED


async def test_a_cancel_ends_waiting_retries_and_the_batch(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent
) -> None:
    batch = await new_batch(6, chunk_size=3)
    bid = batch.batch_id
    due = store.clock() + 3600
    for chunk in range(2):
        claimed = await store.claim_chunk(bid, chunk, lease_ttl=LEASE)
        assert claimed is not None
        first = 3 * chunk
        outcomes = [done(first), retry(first + 1, due, attempts=2), retry(first + 2, due)]
        await store.record_outcomes(bid, chunk, outcomes, token=claimed.token, release=True)
    assert await consistent(bid) == ItemCounts(pending=4, succeeded=2)

    cancelled = await store.cancel_batch(bid)
    assert cancelled.state is BatchState.CANCELLED
    assert await consistent(bid) == ItemCounts(succeeded=2, cancelled=4)
    items, _ = await store.list_items(bid, 6, "", [])
    assert [(i.state, i.attempts) for i in items[:3]] == [(OK, 1), (CANCELLED, 2), (CANCELLED, 1)]
    assert items[1].error_message == "unavailable, attempt 2"
    assert items[1].next_attempt_time is None
    # The retry jobs find nothing to run.
    assert await store.claim_chunk(bid, 0, lease_ttl=LEASE) is None


async def test_a_retry_of_a_cancelling_batch_is_cancelled(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    assert (await store.cancel_batch(bid)).state is BatchState.CANCELLING
    due = store.clock() + 30
    result = await store.record_outcomes(
        bid, 0, [retry(0, due)], token=claimed.token, release=False
    )
    assert (result.state, result.next_retry_at) == (BatchState.CANCELLING, None)
    assert await consistent(bid) == ItemCounts(running=2, cancelled=1)
    # The holder's release cancels what it did not start.
    result = await store.record_outcomes(bid, 0, [done(1)], token=claimed.token, release=True)
    assert result.state is BatchState.CANCELLED
    assert await consistent(bid) == ItemCounts(succeeded=1, cancelled=2)


async def test_a_dead_holders_chunk_is_cancelled_by_the_takeover(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await new_batch(6, chunk_size=3)
    bid = batch.batch_id
    dead = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert dead is not None
    await store.record_outcomes(bid, 0, [done(0)], token=dead.token, release=False)
    assert (await store.cancel_batch(bid)).state is BatchState.CANCELLING
    assert await consistent(bid) == ItemCounts(running=2, succeeded=1, cancelled=3)

    advance(LEASE)
    assert await store.claim_chunk(bid, 0, lease_ttl=LEASE) is None
    assert (await store.get_batch(bid)).state is BatchState.CANCELLED
    assert await consistent(bid) == ItemCounts(succeeded=1, cancelled=5)
