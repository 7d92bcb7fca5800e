"""Dispatch control in the store: pause parks chunks and resume re-enqueues them, the
per-batch window of queued jobs, priority scores, option updates and the global pending
counter behind admission limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.core import jobs
from batchd.core.domain import (
    DEFAULT_TENANT,
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemOutcome,
    ItemState,
    NewItem,
)
from batchd.core.errors import Exhausted, FailedPrecondition
from batchd.core.keys import Keys
from batchd.core.store import BatchStore, Limits, UploadSession

from .conftest import Consistent

# The queues a worker serving the tests' handler reads.
ECHO = ["test.echo"]


async def submit(
    store: BatchStore,
    total: int,
    *,
    chunk_size: int = 2,
    priority: int = 0,
    tenant: str = DEFAULT_TENANT,
) -> BatchRecord:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=chunk_size, priority=priority),
        metadata={},
        tenant=tenant,
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"item-{i}", b"{}") for i in range(total))
    batch, _ = await session.commit()
    return batch


async def queued(redis: Redis, keys: Keys, batch_id: str) -> dict[str, int]:
    entries = await redis.zrange(keys.queue("test.echo"), 0, -1, withscores=True)
    return {
        bytes(member).decode(): int(score)
        for member, score in entries
        if bytes(member).decode().startswith(f"{batch_id}:")
    }


def chunks_of(jobs_queued: dict[str, int]) -> list[int]:
    return sorted(int(job_id.split(":")[1]) for job_id in jobs_queued)


def succeeded(index: int) -> ItemOutcome:
    return ItemOutcome(index, ItemState.SUCCEEDED, 1, None, None, output_json=b"{}")


@pytest.fixture
def windowed(redis: Redis, keys: Keys, clock: Callable[[], float]) -> BatchStore:
    return BatchStore(redis, keys, clock=clock, limits=Limits(window=2))


async def test_a_window_of_jobs_is_queued_and_each_claim_adds_the_next(
    windowed: BatchStore, redis: Redis, keys: Keys
) -> None:
    batch = await submit(windowed, 10, chunk_size=2)  # 5 chunks
    assert chunks_of(await queued(redis, keys, batch.batch_id)) == [0, 1]
    await windowed.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert chunks_of(await queued(redis, keys, batch.batch_id)) == [0, 1, 2]
    # A second claim of the same chunk (a duplicate job) dispatches nothing more.
    await windowed.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert chunks_of(await queued(redis, keys, batch.batch_id)) == [0, 1, 2]
    for n in (1, 2, 3):
        await windowed.claim_chunk(batch.batch_id, n, lease_ttl=30)
    await windowed.claim_chunk(batch.batch_id, 4, lease_ttl=30)
    assert chunks_of(await queued(redis, keys, batch.batch_id)) == [0, 1, 2, 3, 4]


async def test_a_tenant_with_one_batch_goes_ahead_of_another_tenants_backlog(
    windowed: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    # Tenant "big" queues ten batches' windows (20 jobs); ten seconds later "small" one
    # batch: small's jobs are stamped at the head of the queue by its own dispatch clock
    # and go in ahead of big's backlog, not behind it; big's batches keep their order.
    big = [await submit(windowed, 8, tenant="big") for _ in range(10)]
    advance(10)
    small = await submit(windowed, 8, tenant="small")
    order = [bytes(m).decode() for m in await redis.zrange(keys.queue("test.echo"), 0, -1)]
    assert len(order) == 22
    # Stamped one and two ms after the head, as big's second and third jobs are (a tie
    # goes either way): within the first five.
    ranks = [order.index(f"{small.batch_id}:{n}") for n in range(2)]
    assert max(ranks) <= 4
    firsts = [order.index(f"{b.batch_id}:0") for b in big]
    assert firsts == sorted(firsts)
    # Its next chunk, dispatched by a claim, is stamped by its clock too: near the front.
    await windowed.claim_chunk(small.batch_id, 0, lease_ttl=30)
    await windowed.claim_chunk(big[0].batch_id, 0, lease_ttl=30)
    order = [bytes(m).decode() for m in await redis.zrange(keys.queue("test.echo"), 0, -1)]
    assert order.index(f"{small.batch_id}:2:q") < order.index(f"{big[0].batch_id}:2:q")
    assert order.index(f"{small.batch_id}:2:q") <= 7


async def test_a_higher_priority_is_always_earlier_and_every_job_is_due(
    store: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    low = await submit(store, 2, priority=0)
    advance(3600)  # an hour later, and still ahead
    high = await submit(store, 2, priority=1)
    (low_score,) = (await queued(redis, keys, low.batch_id)).values()
    (high_score,) = (await queued(redis, keys, high.batch_id)).values()
    assert high_score < low_score <= round(store.clock() * 1000)


async def test_an_update_moves_the_queued_jobs_and_keeps_the_other_options(
    store: BatchStore, redis: Redis, keys: Keys
) -> None:
    batch = await submit(store, 4, chunk_size=2)
    before = await queued(redis, keys, batch.batch_id)
    updated = await store.update_options(batch.batch_id, {"priority": 3, "max_per_second": 7.5})
    assert (updated.options.priority, updated.options.max_per_second) == (3, 7.5)
    assert updated.options.chunk_size == 2
    after = await queued(redis, keys, batch.batch_id)
    step = jobs.PRIORITY_STEP_MS
    assert after == {job_id: score - 3 * step for job_id, score in before.items()}


async def test_pause_parks_claims_and_resume_queues_them_again(
    store: BatchStore, redis: Redis, keys: Keys, consistent: Consistent
) -> None:
    batch = await submit(store, 4, chunk_size=2)
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert claimed is not None
    paused = await store.pause_batch(batch.batch_id)
    assert paused.state is BatchState.PAUSED
    assert (await store.pause_batch(batch.batch_id)).state is BatchState.PAUSED  # idempotent
    # A claim while paused starts nothing; the holder learns of the pause from its record.
    assert await store.claim_chunk(batch.batch_id, 1, lease_ttl=30) is None
    result = await store.record_outcomes(
        batch.batch_id, 0, [succeeded(0)], token=claimed.token, release=True
    )
    assert result.state is BatchState.PAUSED
    # The hand-back's job comes, and parks too.
    assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=30) is None
    parked = await redis.smembers(keys.parked(batch.batch_id))  # type: ignore[misc]
    assert sorted(int(n) for n in parked) == [0, 1]
    counts = await consistent(batch.batch_id)
    assert (counts.succeeded, counts.pending, counts.running) == (1, 3, 0)

    await redis.delete(keys.queue("test.echo"))  # resume alone must bring the chunks back
    resumed = await store.resume_batch(batch.batch_id)
    assert resumed.state is BatchState.RUNNING
    assert chunks_of(await queued(redis, keys, batch.batch_id)) == [0, 1]
    assert not await redis.exists(keys.parked(batch.batch_id))
    assert (await store.resume_batch(batch.batch_id)).state is BatchState.RUNNING
    again = await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert again is not None
    assert [i for i, _, _ in again.items] == [1]


async def test_a_paused_batch_can_be_cancelled_but_not_a_finished_one_paused(
    store: BatchStore, consistent: Consistent
) -> None:
    batch = await submit(store, 4, chunk_size=2)
    await store.pause_batch(batch.batch_id)
    await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)  # parked
    cancelled = await store.cancel_batch(batch.batch_id)
    assert cancelled.state is BatchState.CANCELLED
    assert (await consistent(batch.batch_id)).cancelled == 4
    with pytest.raises(FailedPrecondition):
        await store.pause_batch(batch.batch_id)
    with pytest.raises(FailedPrecondition):
        await store.resume_batch(batch.batch_id)
    with pytest.raises(FailedPrecondition):
        await store.update_options(batch.batch_id, {"priority": 1})


async def test_a_paused_batch_whose_last_items_finish_completes(store: BatchStore) -> None:
    batch = await submit(store, 2, chunk_size=2)
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert claimed is not None
    await store.pause_batch(batch.batch_id)
    result = await store.record_outcomes(
        batch.batch_id, 0, [succeeded(0), succeeded(1)], token=claimed.token, release=True
    )
    assert result.state is BatchState.COMPLETED


async def test_the_pending_counter_follows_commits_outcomes_and_cancels(
    store: BatchStore,
) -> None:
    start = await store.pending_items()
    batch = await submit(store, 6, chunk_size=2)
    assert await store.pending_items() == start + 6
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert claimed is not None
    await store.record_outcomes(
        batch.batch_id, 0, [succeeded(0)], token=claimed.token, release=False
    )
    assert await store.pending_items() == start + 5
    await store.cancel_batch(batch.batch_id)
    # The running item is still pending until its holder records it.
    assert await store.pending_items() == start + 1
    await store.record_outcomes(
        batch.batch_id, 0, [succeeded(1)], token=claimed.token, release=True
    )
    assert await store.pending_items() == start


async def test_admission_refuses_beyond_the_limits_and_keeps_nothing(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    store = BatchStore(
        redis, keys, clock=clock, limits=Limits(max_pending_items=10, max_batch_items=8)
    )
    with pytest.raises(Exhausted) as per_batch:
        await submit(store, 9, chunk_size=2)
    assert per_batch.value.quota_subject == "max_batch_items"
    await submit(store, 6, chunk_size=2)
    with pytest.raises(Exhausted) as overall:
        await submit(store, 5, chunk_size=2)
    assert overall.value.quota_subject == "max_pending_items"
    assert overall.value.retry_after > 0
    batches, _ = await store.list_batches(10, "", [])
    assert len(batches) == 1
    leftovers = [key async for key in redis.scan_iter(match=f"{keys.prefix}b:*", count=1000)]
    assert all(batches[0].batch_id.encode() in key for key in leftovers)


async def test_uploads_not_yet_committed_count_toward_admission(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    # Uploads that never end may not take Redis past the limits either: what they have
    # staged counts, and stops counting once they end (committed or aborted).
    limits = Limits(max_pending_items=100, tenant_max_pending_items=60)
    store = BatchStore(redis, keys, clock=clock, limits=limits)

    async def staging(tenant: str, count: int) -> UploadSession:
        spec = BatchSpec(
            batch_id=f"b-{uuid.uuid4().hex[:12]}",
            handler="test.echo",
            options=BatchOptions(chunk_size=10),
            metadata={},
            tenant=tenant,
        )
        session = await store.begin_upload(spec)
        await session.add_items(NewItem(f"i{n}", b"{}") for n in range(count))
        return session

    never_ending = [await staging("a", 40), await staging("b", 40)]
    with pytest.raises(Exhausted) as overall:
        await staging("c", 30)  # 80 staged elsewhere: 110 > 100
    assert overall.value.quota_subject == "max_pending_items"
    await never_ending[1].abort()
    with pytest.raises(Exhausted) as per_tenant:
        await staging("a", 30)  # tenant a's 40 staged: 70 > 60 (and 70 <= 100)
    assert per_tenant.value.quota_subject == "tenant:a:max_pending_items"
    await never_ending[0].abort()
    committed = await staging("c", 30)
    await committed.commit()
    assert await redis.zcard(keys.staging) == 0  # nothing of any of them is staged now
    leftovers = [k async for k in redis.scan_iter(match=f"{keys.prefix}b:*", count=1000)]
    assert all(committed.spec.batch_id.encode() in key for key in leftovers)


async def test_an_abort_cancelled_midway_still_unlists_the_upload(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    # A client gone mid-stream cancels the server's handler, and the handler's clean-up may
    # be cancelled again: the staged keys and the staging index entry go all the same.
    store = BatchStore(redis, keys, clock=clock)
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=10),
        metadata={},
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", b'{"n":1}') for n in range(20))
    assert await redis.zcard(keys.staging) == 1
    aborting = asyncio.create_task(session.abort())
    await asyncio.sleep(0)  # the abort is under way: deleting the staged keys
    aborting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await aborting

    async def unlisted() -> bool | None:
        return True if await redis.zcard(keys.staging) == 0 else None

    await poll(unlisted)
    assert await redis.hlen(keys.staging_items) == 0  # type: ignore[misc]
    assert [k async for k in redis.scan_iter(match=f"{keys.prefix}b:{{{spec.batch_id}}}*")] == []


async def test_tenant_quotas_refuse_beyond_them_and_keep_nothing(
    redis: Redis, keys: Keys, clock: Callable[[], float], advance: Callable[[float], float]
) -> None:
    limits = Limits(tenant_max_pending_items=10, tenant_max_open_batches=2)
    store = BatchStore(redis, keys, clock=clock, limits=limits)
    first = await submit(store, 6, tenant="acme")
    with pytest.raises(Exhausted) as pending:
        await submit(store, 5, tenant="acme")
    assert pending.value.quota_subject == "tenant:acme:max_pending_items"
    await submit(store, 5, tenant="other")  # another tenant's share is its own
    await submit(store, 2, tenant="acme")
    with pytest.raises(Exhausted) as open_batches:
        await submit(store, 1, tenant="acme")
    assert open_batches.value.quota_subject == "tenant:acme:max_open_batches"
    assert open_batches.value.retry_after > 0
    listed, _ = await store.list_batches(10, "", [], "acme")
    assert len(listed) == 2  # nothing of the refused ones stayed
    # A finished batch frees its share; a redrive of it takes the share again.
    claimed = await store.claim_chunk(first.batch_id, 0, lease_ttl=30)
    assert claimed is not None
    await store.cancel_batch(first.batch_id)
    await store.record_outcomes(first.batch_id, 0, [], token=claimed.token, release=True)
    assert (await store.get_batch(first.batch_id)).state is BatchState.CANCELLED
    assert await redis.get(keys.tenant_open("acme")) == b"1"
    assert await redis.get(keys.tenant_pending("acme")) == b"2"
    await submit(store, 1, tenant="acme")
    assert await redis.get(keys.tenant_open("acme")) == b"2"


async def test_a_tenant_submitting_faster_than_its_rate_is_told_when_to_come_back(
    redis: Redis, keys: Keys, clock: Callable[[], float], advance: Callable[[float], float]
) -> None:
    limits = Limits(tenant_max_items_per_second=10, tenant_submit_burst=2)  # 20 at once
    store = BatchStore(redis, keys, clock=clock, limits=limits)
    await submit(store, 24, chunk_size=8, tenant="acme")  # within the burst: into debt
    with pytest.raises(Exhausted) as fast:
        await submit(store, 2, tenant="acme")
    assert fast.value.quota_subject == "tenant:acme:max_items_per_second"
    assert fast.value.retry_after == pytest.approx(0.4)  # 4 items of debt at 10/s
    await submit(store, 2, tenant="other")
    advance(0.4)
    await submit(store, 2, tenant="acme")
    listed, _ = await store.list_batches(10, "", [], "acme")
    assert len(listed) == 2


async def test_a_retry_due_while_paused_waits_and_the_window_keeps_running(
    store: BatchStore,
    redis: Redis,
    keys: Keys,
    clock: Callable[[], float],
    advance: Callable[[float], float],
    consistent: Consistent,
) -> None:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=2, completion_window=60),
        metadata={},
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"item-{i}", b"{}") for i in range(4))
    batch, _ = await session.commit()
    before = await store.pending_items() - 4  # the counter without this batch
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=30)
    assert claimed is not None
    retry = ItemOutcome(0, ItemState.PENDING, 1, None, None, error_code=14, retry_at=clock() + 5)
    await store.record_outcomes(
        batch.batch_id, 0, [retry, succeeded(1)], token=claimed.token, release=True
    )
    await store.pause_batch(batch.batch_id)
    advance(10)  # the retry is due, the batch paused: its job's claim parks the chunk
    assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=30) is None
    parked = await redis.smembers(keys.parked(batch.batch_id))  # type: ignore[misc]
    assert {int(n) for n in parked} == {0}
    assert (await consistent(batch.batch_id)).pending == 3

    advance(60)  # past the completion window: a paused batch expires too
    assert await store.expire_batches() == 1
    expired = await store.get_batch(batch.batch_id)
    assert expired.state is BatchState.COMPLETED
    assert (expired.counts.succeeded, expired.counts.expired) == (1, 3)
    assert await store.pending_items() == before
    # A redrive puts them back in the pending count.
    _, requeued, _ = await store.retry_items(batch.batch_id, [], "")
    assert requeued == 3
    assert await store.pending_items() == before + 3


async def test_the_next_chunk_is_taken_without_a_job_until_every_chunk_is_dispatched(
    windowed: BatchStore, redis: Redis, keys: Keys, consistent: Consistent
) -> None:
    batch = await submit(windowed, 10, chunk_size=2)  # 5 chunks; jobs queued for 0 and 1
    bid = batch.batch_id
    assert (
        await windowed.claim_next_chunk(bid, lease_ttl=30, handlers=ECHO) is None
    )  # QUEUED: not yet
    assert await windowed.claim_chunk(bid, 0, lease_ttl=30) is not None  # dispatches 2
    taken = await windowed.claim_next_chunk(bid, lease_ttl=30, handlers=ECHO)
    assert taken is not None
    assert (taken.chunk, [i for i, _, _ in taken.items]) == (3, [6, 7])
    assert chunks_of(await queued(redis, keys, bid)) == [0, 1, 2]  # no job for chunk 3
    assert await windowed.claim_chunk(bid, 3, lease_ttl=30) is None  # held, as any claim
    last = await windowed.claim_next_chunk(bid, lease_ttl=30, handlers=ECHO)
    assert last is not None
    assert last.chunk == 4
    assert (
        await windowed.claim_next_chunk(bid, lease_ttl=30, handlers=ECHO) is None
    )  # all dispatched
    counts = await consistent(bid)
    assert (counts.running, counts.pending) == (6, 4)
    # Its records count like any chunk's.
    result = await windowed.record_outcomes(
        bid, 3, [succeeded(6), succeeded(7)], token=taken.token, release=True
    )
    assert result.held
    assert (await consistent(bid)).succeeded == 2


async def test_no_chunk_is_taken_while_another_batch_has_jobs_queued(
    windowed: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    first = await submit(windowed, 10, chunk_size=2)
    assert await windowed.claim_chunk(first.batch_id, 0, lease_ttl=30) is not None
    advance(1)
    second = await submit(windowed, 10, chunk_size=2)  # lower priority would do the same
    cursor = await redis.hget(keys.meta(first.batch_id), "cursor")  # type: ignore[misc]
    assert await windowed.claim_next_chunk(first.batch_id, lease_ttl=30, handlers=ECHO) is None
    assert await redis.hget(keys.meta(first.batch_id), "cursor") == cursor  # type: ignore[misc]
    await redis.zrem(keys.queue("test.echo"), *(await queued(redis, keys, second.batch_id)))
    assert await windowed.claim_next_chunk(first.batch_id, lease_ttl=30, handlers=ECHO) is not None


async def test_a_job_of_another_handler_the_worker_serves_stops_it_too(
    windowed: BatchStore, redis: Redis, keys: Keys
) -> None:
    first = await submit(windowed, 10, chunk_size=2)
    assert await windowed.claim_chunk(first.batch_id, 0, lease_ttl=30) is not None
    await redis.zadd(keys.queue("test.other"), {"other-batch:0": 1})
    # A worker serving both handlers lets the queues' order decide; one serving only the
    # batch's handler never sees that job, so nothing waits for this one.
    both = [*ECHO, "test.other"]
    assert await windowed.claim_next_chunk(first.batch_id, lease_ttl=30, handlers=both) is None
    assert await windowed.claim_next_chunk(first.batch_id, lease_ttl=30, handlers=ECHO) is not None
    await redis.delete(keys.queue("test.other"))


async def test_a_taken_chunk_whose_holder_died_is_queued_again(
    store: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    batch = await submit(store, 40, chunk_size=2)  # 20 chunks, a window of 16 queued
    bid = batch.batch_id
    assert await store.claim_chunk(bid, 0, lease_ttl=5) is not None
    taken = await store.claim_next_chunk(bid, lease_ttl=5, handlers=ECHO)
    assert taken is not None
    assert taken.chunk not in chunks_of(await queued(redis, keys, bid))
    assert await store.reap_expired_leases(advance(5)) == 2
    assert taken.chunk in chunks_of(await queued(redis, keys, bid))
    again = await store.claim_chunk(bid, taken.chunk, lease_ttl=5)
    assert again is not None
    assert [i for i, _, _ in again.items] == [i for i, _, _ in taken.items]


@pytest.mark.parametrize("stop", ["pause", "cancel"])
async def test_no_job_is_taken_from_a_paused_or_cancelled_batch(
    store: BatchStore, redis: Redis, keys: Keys, stop: str
) -> None:
    batch = await submit(store, 40, chunk_size=2)
    bid = batch.batch_id
    assert await store.claim_chunk(bid, 0, lease_ttl=30) is not None
    await (store.pause_batch(bid) if stop == "pause" else store.cancel_batch(bid))
    cursor = await redis.hget(keys.meta(bid), "cursor")  # type: ignore[misc]
    assert await store.claim_next_chunk(bid, lease_ttl=30, handlers=ECHO) is None
    assert await redis.hget(keys.meta(bid), "cursor") == cursor  # type: ignore[misc]
