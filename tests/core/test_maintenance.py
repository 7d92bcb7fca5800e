"""The maintenance sweep: reaps leases, expires batches, and its loop outlives failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from batchd.core import maintenance
from batchd.core.domain import BatchRecord, BatchState
from batchd.core.maintenance import SweepResult, maintenance_loop, sweep
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Advance = Callable[[float], float]


async def test_a_sweep_reaps_leases_and_expires_batches(
    store: BatchStore, new_batch: NewBatch, advance: Advance
) -> None:
    batch = await new_batch(6, chunk_size=3, completion_window=60.0)
    assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=5.0) is not None
    assert await sweep(store) == SweepResult(leases_reaped=0, batches_expired=0)
    advance(5)
    assert await sweep(store) == SweepResult(leases_reaped=1, batches_expired=0)
    assert await sweep(store, store.clock() + 55) == SweepResult(0, 1)
    assert (await store.get_batch(batch.batch_id)).state is BatchState.COMPLETED


async def test_the_loop_keeps_sweeping_after_a_failure(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    second = asyncio.Event()

    async def flaky(swept: BatchStore, now: float | None = None) -> SweepResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis is down")
        second.set()
        return SweepResult(0, 0)

    monkeypatch.setattr(maintenance, "sweep", flaky)
    loop = asyncio.create_task(maintenance_loop(store, interval=0.01))
    await asyncio.wait_for(second.wait(), timeout=5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert calls >= 2


async def test_a_sweep_moves_the_jobs_an_earlier_version_queued(
    store: BatchStore, new_batch: NewBatch, redis: Redis
) -> None:
    # An upgrade leaves jobs in the single queue of earlier versions: they go to their
    # handler's queue, with their scores, and a gone batch's job is dropped.
    batch = await new_batch(6, chunk_size=3)
    keys = store.keys
    queue = keys.queue("test.echo")
    await redis.delete(queue)
    await redis.zadd(keys.legacy_queue, {f"{batch.batch_id}:0": 5, f"{batch.batch_id}:1:t9": 9})
    await redis.zadd(keys.legacy_queue, {"gone-batch:0": 7})
    assert (await sweep(store)).legacy_jobs_moved == 3
    assert await redis.zrange(queue, 0, -1, withscores=True) == [
        (f"{batch.batch_id}:0".encode(), 5.0),
        (f"{batch.batch_id}:1:t9".encode(), 9.0),
    ]
    assert not await redis.exists(keys.legacy_queue)
    assert (await sweep(store)).legacy_jobs_moved == 0
