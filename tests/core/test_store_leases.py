"""Leases on claimed chunks: one holder at a time, takeovers, renewals, reaping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import deserialize_job
from arq.worker import Worker, func
from redis.asyncio import Redis

from batchd.core import jobs
from batchd.core.domain import BatchRecord, BatchState, ItemCounts, ItemOutcome, ItemState
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Consistent = Callable[[str], Awaitable[ItemCounts]]
Advance = Callable[[float], float]

LEASE = 5.0
OK = ItemState.SUCCEEDED


def done(index: int, state: ItemState = OK) -> ItemOutcome:
    return ItemOutcome(index=index, state=state, attempts=1, start_time=None, end_time=None)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


async def held(store: BatchStore, claims: list[tuple[str, int, str, int]]) -> list[bool]:
    """Which of `claims` a renewal finds still held (it says their batch's state)."""
    return [state is not None for state in await store.renew_leases(claims, LEASE)]


async def test_a_live_claim_is_not_handed_out_twice(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent
) -> None:
    batch = await new_batch(7, chunk_size=3)
    first = await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE)
    assert first is not None
    assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE) is None
    assert await consistent(batch.batch_id) == ItemCounts(pending=4, running=3)
    lease = await store.redis.zscore(store.keys.leases, f"{batch.batch_id}/0")
    assert lease == ms(store.clock() + LEASE)


async def test_an_expired_lease_is_taken_over_and_the_stale_holder_counts_nothing_twice(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await new_batch(7, chunk_size=3)
    bid = batch.batch_id
    stale = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert stale is not None
    await store.record_outcomes(bid, 0, [done(0)], token=stale.token, release=False)

    advance(LEASE - 0.001)
    assert await store.claim_chunk(bid, 0, lease_ttl=LEASE) is None  # not yet
    advance(0.001)
    fresh = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert fresh is not None
    assert fresh.token != stale.token
    assert [index for index, _, _ in fresh.items] == [1, 2]
    assert await consistent(bid) == ItemCounts(pending=4, running=2, succeeded=1)

    # The stale holder's release does nothing: the chunk stays the new holder's.
    result = await store.record_outcomes(bid, 0, [], token=stale.token, release=True)
    assert (result.state, result.held) == (BatchState.RUNNING, False)
    assert await store.claim_chunk(bid, 0, lease_ttl=LEASE) is None
    assert await held(store, [(bid, 0, fresh.token, 0)]) == [True]

    # Its records still count, item by item, first writer wins: never twice.
    result = await store.record_outcomes(bid, 0, [done(1)], token=stale.token, release=False)
    assert result.held is False
    assert await consistent(bid) == ItemCounts(pending=4, running=1, succeeded=2)
    failed = done(1, ItemState.FAILED)
    result = await store.record_outcomes(bid, 0, [failed, done(2)], token=fresh.token, release=True)
    assert result.held is True
    assert await consistent(bid) == ItemCounts(pending=4, succeeded=3)
    assert await store.redis.hget(store.keys.chunk_states(bid), "0") == b"d"  # type: ignore[misc]
    assert await store.redis.zscore(store.keys.leases, f"{bid}/0") is None


async def test_renew_reports_lost_claims_and_keeps_live_ones(
    store: BatchStore, new_batch: NewBatch, advance: Advance
) -> None:
    one, two = await new_batch(6, chunk_size=3), await new_batch(3, chunk_size=3)
    a = await store.claim_chunk(one.batch_id, 0, lease_ttl=LEASE)
    b = await store.claim_chunk(one.batch_id, 1, lease_ttl=LEASE)
    c = await store.claim_chunk(two.batch_id, 0, lease_ttl=LEASE)
    assert a is not None
    assert b is not None
    assert c is not None
    claims = [
        (one.batch_id, 0, a.token, 0),
        (one.batch_id, 1, b.token, 0),
        (two.batch_id, 0, c.token, 0),
    ]
    assert await held(store, claims) == [True, True, True]
    assert await held(store, []) == []

    # Renewed leases outlive the first term; an unrenewed one runs out and is taken over.
    advance(LEASE - 1)
    assert await held(store, claims[:2]) == [True, True]
    advance(2)
    assert await store.claim_chunk(one.batch_id, 0, lease_ttl=LEASE) is None
    assert await store.claim_chunk(one.batch_id, 1, lease_ttl=LEASE) is None
    taken = await store.claim_chunk(two.batch_id, 0, lease_ttl=LEASE)
    assert taken is not None
    assert await held(store, claims) == [True, True, False]

    # A released chunk, a wrong token, a deleted batch: all lost.
    await store.record_outcomes(one.batch_id, 1, [], token=b.token, release=True)
    await store.record_outcomes(
        two.batch_id, 0, [done(0), done(1), done(2)], token=taken.token, release=True
    )
    await store.delete_batch(two.batch_id)
    assert await held(
        store, [(one.batch_id, 0, a.token, 0), (one.batch_id, 0, "other", 0), *claims[1:]]
    ) == [True, False, False, False]


async def test_reaping_enqueues_the_job_a_worker_needs(
    store: BatchStore, redis: Redis, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    # A worker took the commit's job, claimed the chunk, recorded one item and died.
    commit_job = store.keys.chunk_job_id(bid, 0)
    await redis.zrem(store.keys.queue("test.echo"), commit_job)
    await redis.delete(jobs.JOB_KEY_PREFIX + commit_job)
    dead = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert dead is not None
    await store.record_outcomes(bid, 0, [done(0)], token=dead.token, release=False)

    assert await store.reap_expired_leases(store.clock()) == 0
    now = advance(LEASE)
    assert await store.reap_expired_leases(now) == 1
    assert await store.reap_expired_leases(now) == 0  # once only, wherever it runs
    assert await redis.zscore(store.keys.leases, f"{bid}/0") is None

    job_id = f"{bid}:0:l{ms(now)}"
    assert await redis.zrange(store.keys.queue("test.echo"), 0, -1, withscores=True) == [
        (job_id.encode(), ms(now))
    ]
    payload = await redis.get(jobs.JOB_KEY_PREFIX + job_id)
    assert payload == jobs.chunk_job(job_id, bid, 0, now_ms=ms(now)).payload
    job = deserialize_job(payload, deserializer=jobs.deserialize)
    assert job.function == jobs.RUN_CHUNK
    assert list(job.args) == [bid, 0]
    assert job.kwargs == {}

    # A real ARQ worker runs it: the claim takes the chunk over and finishes it.
    ran: list[list[int]] = []

    async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> None:
        claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=LEASE)
        assert claimed is not None
        ran.append([index for index, _, _ in claimed.items])
        outcomes = [done(index) for index, _, _ in claimed.items]
        await store.record_outcomes(batch_id, chunk, outcomes, token=claimed.token, release=True)

    await _burst(redis, store, run_chunk)
    assert ran == [[1, 2]]
    assert (await store.get_batch(bid)).state is BatchState.COMPLETED
    assert await consistent(bid) == ItemCounts(succeeded=3)


async def test_a_release_hands_back_what_was_not_started(
    store: BatchStore, redis: Redis, new_batch: NewBatch, consistent: Consistent
) -> None:
    batch = await new_batch(3, chunk_size=3)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    result = await store.record_outcomes(bid, 0, [done(0)], token=claimed.token, release=True)
    now = ms(store.clock())
    assert (result.held, result.next_retry_at) == (True, now / 1000)
    assert await consistent(bid) == ItemCounts(pending=2, succeeded=1)
    items, _ = await store.list_items(bid, 3, "", [])
    assert [(i.state, i.next_attempt_time) for i in items[1:]] == [(ItemState.PENDING, None)] * 2
    # A job to run them again, now; its claim hands out just those two.
    assert await redis.zscore(store.keys.queue("test.echo"), f"{bid}:0:t{now}") == now
    again = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert again is not None
    assert [index for index, _, _ in again.items] == [1, 2]
    assert await consistent(bid) == ItemCounts(running=2, succeeded=1)


async def _burst(redis: Redis, store: BatchStore, run_chunk: Callable[..., Any]) -> None:
    pool = ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    worker = Worker(
        functions=[func(run_chunk, name=jobs.RUN_CHUNK)],
        redis_pool=pool,
        queue_name=store.keys.queue("test.echo"),
        burst=True,
        handle_signals=False,
        poll_delay=0.01,
        keep_result=0,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    await worker.main()
    assert worker.jobs_failed == 0
