"""Redrive (retry_items), retention of finished batches, and deletion."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from batchd.core.config import DEFAULT_RETENTION
from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemCounts,
    ItemOutcome,
    ItemState,
    NewItem,
)
from batchd.core.errors import FailedPrecondition, InvalidRequest, NotFound
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Consistent = Callable[[str], Awaitable[ItemCounts]]
Advance = Callable[[float], float]

LEASE = 5.0
WINDOW = 60.0
OK, FAILED, EXPIRED = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.EXPIRED


def done(index: int, state: ItemState = OK) -> ItemOutcome:
    return ItemOutcome(index=index, state=state, attempts=3, start_time=None, end_time=None)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


async def run_all(
    store: BatchStore, batch_id: str, chunks: int, fail: frozenset[int] = frozenset()
) -> None:
    """A worker that claims every chunk it can and finishes it."""
    for chunk in range(chunks):
        claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=LEASE)
        if claimed is None:
            continue
        outcomes = [done(i, FAILED if i in fail else OK) for i, _, _ in claimed.items]
        await store.record_outcomes(batch_id, chunk, outcomes, token=claimed.token, release=True)


async def batch_keys(redis: Redis, store: BatchStore, batch_id: str) -> list[bytes]:
    """The batch's own keys (not its ARQ jobs), found by SCAN."""
    pattern = store.keys.batch_prefix(batch_id).replace("{", "[{]").replace("}", "[}]") + "*"
    return sorted([key async for key in redis.scan_iter(match=pattern, count=1000)])


async def submit_with_request(store: BatchStore, total: int, window: float = 0.0) -> BatchSpec:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=2, completion_window=window),
        metadata={},
        request_id=f"req-{uuid.uuid4().hex}",
    )
    session = await store.begin_upload(spec)
    await session.add_items([NewItem(f"i{n}", b"{}") for n in range(total)])
    await session.commit()
    return spec


async def finished_with_failures_and_expiries(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> BatchRecord:
    """9 items in chunks of 3: items 1 and 4 FAILED, chunk 2 expired unclaimed (6-8)."""
    batch = await new_batch(9, chunk_size=3, completion_window=WINDOW)
    await run_all(store, batch.batch_id, 2, fail=frozenset({1, 4}))
    assert await store.expire_batches(advance(WINDOW)) == 1
    assert await consistent(batch.batch_id) == ItemCounts(succeeded=4, failed=2, expired=3)
    return batch


async def test_a_redrive_of_everything_runs_the_batch_again_to_completion(
    store: BatchStore,
    redis: Redis,
    new_batch: NewBatch,
    consistent: Consistent,
    advance: Advance,
) -> None:
    batch = await finished_with_failures_and_expiries(store, new_batch, consistent, advance)
    bid = batch.batch_id
    assert all([await redis.pttl(key) > 0 for key in await batch_keys(redis, store, bid)])

    rerun, requeued, replayed = await store.retry_items(bid, [], "redrive-1")
    assert (requeued, replayed) == (5, False)
    assert (rerun.state, rerun.end_time) == (BatchState.RUNNING, None)
    assert await consistent(bid) == ItemCounts(pending=5, succeeded=4)
    # Kept again for good, with a new deadline and a job per chunk touched.
    assert all([await redis.pttl(key) == -1 for key in await batch_keys(redis, store, bid)])
    deadline = ms(store.clock() + WINDOW)
    assert await redis.zscore(store.keys.deadlines, bid) == deadline
    queued = {
        bytes(job).decode() for job in await redis.zrange(store.keys.queue("test.echo"), 0, -1)
    }
    now = ms(store.clock())
    assert {f"{bid}:{n}:r{now}" for n in range(3)} <= queued
    items, _ = await store.list_items(bid, 9, "", [ItemState.PENDING])
    assert [(i.index, i.attempts, i.next_attempt_time) for i in items] == [
        (index, 0, None) for index in (1, 4, 6, 7, 8)
    ]

    # The same request again: the same answer, nothing more requeued.
    again, requeued, replayed = await store.retry_items(bid, [], "redrive-1")
    assert (requeued, replayed) == (5, True)
    assert again.counts == rerun.counts

    # The retried items get a fresh attempt budget, and the batch completes.
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    assert ([i for i, _, _ in claimed.items], claimed.attempts) == ([1], {})
    await store.record_outcomes(bid, 0, [done(1)], token=claimed.token, release=True)
    await run_all(store, bid, 3)
    finished = await store.get_batch(bid)
    assert finished.state is BatchState.COMPLETED
    assert await consistent(bid) == ItemCounts(succeeded=9)
    assert await redis.zscore(store.keys.deadlines, bid) is None
    assert all([await redis.pttl(key) > 0 for key in await batch_keys(redis, store, bid)])


async def test_a_redrive_by_ids_requeues_only_those(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await finished_with_failures_and_expiries(store, new_batch, consistent, advance)
    bid = batch.batch_id
    _, requeued, replayed = await store.retry_items(bid, ["item-4", "item-7", "item-4"], "")
    assert (requeued, replayed) == (2, False)
    assert await consistent(bid) == ItemCounts(pending=2, succeeded=4, failed=1, expired=2)
    items, _ = await store.list_items(bid, 9, "", [])
    assert [i.state for i in items[6:]] == [EXPIRED, ItemState.PENDING, EXPIRED]

    await run_all(store, bid, 3)
    assert (await store.get_batch(bid)).state is BatchState.COMPLETED
    assert await consistent(bid) == ItemCounts(succeeded=6, failed=1, expired=2)
    # The rest can still be redriven, by id or all at once.
    _, requeued, _ = await store.retry_items(bid, [], "")
    assert requeued == 3
    assert await consistent(bid) == ItemCounts(pending=3, succeeded=6)


async def test_a_redrive_names_the_items_it_cannot_retry(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent, advance: Advance
) -> None:
    batch = await finished_with_failures_and_expiries(store, new_batch, consistent, advance)
    bid = batch.batch_id
    with pytest.raises(InvalidRequest) as missing:
        await store.retry_items(bid, ["item-1", "nope", "item-4"], "r")
    assert [v.field for v in missing.value.violations] == ["custom_ids[1]"]
    with pytest.raises(InvalidRequest) as succeeded:
        await store.retry_items(bid, ["item-1", "item-0", "item-6", "item-2"], "r")
    assert [v.field for v in succeeded.value.violations] == ["custom_ids[1]", "custom_ids[3]"]
    assert "SUCCEEDED" in succeeded.value.violations[0].description
    assert await consistent(bid) == ItemCounts(succeeded=4, failed=2, expired=3)  # untouched

    # A request id belongs to the batch it first retried.
    other = await new_batch(1)
    await store.retry_items(other.batch_id, [], "mine")
    with pytest.raises(InvalidRequest) as reused:
        await store.retry_items(bid, [], "mine")
    assert [v.field for v in reused.value.violations] == ["request_id"]


async def test_a_cancelling_batch_cannot_be_redriven(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch(6, chunk_size=3)
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE)
    assert claimed is not None
    await store.record_outcomes(
        batch.batch_id, 0, [done(0, FAILED)], token=claimed.token, release=False
    )
    await store.cancel_batch(batch.batch_id)
    with pytest.raises(FailedPrecondition):
        await store.retry_items(batch.batch_id, [], "")
    # A running batch can: the item waits for its holder's release.
    running = await new_batch(3, chunk_size=3)
    claimed = await store.claim_chunk(running.batch_id, 0, lease_ttl=LEASE)
    assert claimed is not None
    await store.record_outcomes(
        running.batch_id, 0, [done(0, FAILED)], token=claimed.token, release=False
    )
    _, requeued, _ = await store.retry_items(running.batch_id, ["item-0"], "")
    assert requeued == 1
    assert await store.claim_chunk(running.batch_id, 0, lease_ttl=LEASE) is None  # still held
    await store.record_outcomes(
        running.batch_id, 0, [done(1), done(2)], token=claimed.token, release=True
    )
    again = await store.claim_chunk(running.batch_id, 0, lease_ttl=LEASE)
    assert again is not None
    assert [i for i, _, _ in again.items] == [0]


async def test_a_finished_batch_and_its_request_key_are_kept_for_the_retention(
    redis: Redis, store: BatchStore
) -> None:
    spec = await submit_with_request(store, 5)
    await run_all(store, spec.batch_id, 3)
    keys = await batch_keys(redis, store, spec.batch_id)
    assert len(keys) >= 3 + 3 + 3  # meta, ids, chunks, running..., c:/o: per chunk
    request = store.keys.request(spec.request_id)
    for key in [*keys, request.encode()]:
        ttl = await redis.pttl(key)
        assert DEFAULT_RETENTION * 1000 - 60_000 < ttl <= DEFAULT_RETENTION * 1000, key

    # Once its meta is gone, ListBatches skips it and prunes the index.
    await redis.delete(store.keys.meta(spec.batch_id))
    assert await store.list_batches(10, "", []) == ([], "")
    assert await redis.zscore(store.keys.batches, spec.batch_id) is None


async def test_delete_removes_every_key_of_a_finished_batch(
    store: BatchStore, redis: Redis, new_batch: NewBatch
) -> None:
    spec = await submit_with_request(store, 5, window=WINDOW)
    bid = spec.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    with pytest.raises(FailedPrecondition):
        await store.delete_batch(bid)  # RUNNING
    retry = ItemOutcome(
        0, ItemState.PENDING, 1, None, None, error_code=2, retry_at=store.clock() + 9
    )
    await store.record_outcomes(bid, 0, [retry], token=claimed.token, release=False)
    await store.cancel_batch(bid)
    with pytest.raises(FailedPrecondition):
        await store.delete_batch(bid)  # CANCELLING
    await store.record_outcomes(bid, 0, [done(1)], token=claimed.token, release=True)
    assert (await store.get_batch(bid)).state is BatchState.CANCELLED
    assert await batch_keys(redis, store, bid)
    other = await new_batch(1)  # a neighbour that must not be touched

    await store.delete_batch(bid)
    assert await batch_keys(redis, store, bid) == []
    assert await redis.exists(store.keys.request(spec.request_id)) == 0
    assert await redis.zrange(store.keys.batches, 0, -1) == [other.batch_id.encode()]
    # The neighbour is open (filed with no deadline: +inf); the deleted batch is gone.
    assert await redis.zrange(store.keys.deadlines, 0, -1) == [other.batch_id.encode()]
    assert await redis.zrange(store.keys.leases, 0, -1) == []
    with pytest.raises(NotFound):
        await store.get_batch(bid)
    with pytest.raises(NotFound):
        await store.delete_batch(bid)
    # A worker holding a job of the deleted batch finds nothing to do.
    assert await store.claim_chunk(bid, 1, lease_ttl=LEASE) is None
    assert (await store.get_batch(other.batch_id)).total_items == 1


async def test_a_redrive_of_a_cancelled_batch_queues_its_cancelled_chunks_again(
    store: BatchStore, new_batch: NewBatch, consistent: Consistent
) -> None:
    batch = await new_batch(6, chunk_size=3)
    bid = batch.batch_id
    claimed = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert claimed is not None
    # Item 0 fails, the rest is handed back; the cancel makes chunks 0 and 1 cancelled.
    await store.record_outcomes(bid, 0, [done(0, FAILED)], token=claimed.token, release=True)
    assert (await store.cancel_batch(bid)).state is BatchState.CANCELLED
    assert await consistent(bid) == ItemCounts(failed=1, cancelled=5)

    _, requeued, _ = await store.retry_items(bid, ["item-0"], "")
    assert requeued == 1
    assert await consistent(bid) == ItemCounts(pending=1, cancelled=5)
    again = await store.claim_chunk(bid, 0, lease_ttl=LEASE)
    assert again is not None
    assert [i for i, _, _ in again.items] == [0]
    await store.record_outcomes(bid, 0, [done(0)], token=again.token, release=True)
    assert (await store.get_batch(bid)).state is BatchState.COMPLETED
    assert await consistent(bid) == ItemCounts(succeeded=1, cancelled=5)
