"""Scheduled batches in the store: filed, not dispatched, at commit; started by the
sweep once due (once, whichever process sweeps); cancelled ones never started."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from support.polling import poll

from batchd.core import maintenance
from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.metrics import MaintenanceMetrics
from batchd.core.store import BatchStore


async def _scheduled(store: BatchStore, ahead: float, *, window: float = 60.0) -> BatchRecord:
    spec = BatchSpec(
        batch_id=f"s-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=2, completion_window=window),
        metadata={},
        start_at=store.clock() + ahead,
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"item-{i}", b"{}") for i in range(5))
    batch, _ = await session.commit()
    return batch


async def test_a_scheduled_batch_is_filed_not_dispatched(
    store: BatchStore, redis: Redis, keys: Keys
) -> None:
    batch = await _scheduled(store, 30)

    assert batch.state is BatchState.QUEUED
    assert batch.scheduled_start == store.clock() + 30
    assert await redis.zscore(keys.scheduled, batch.batch_id) == (store.clock() + 30) * 1000
    assert await redis.zcard(keys.queue("test.echo")) == 0
    # The completion window counts from the start time.
    assert await redis.zscore(keys.deadlines, batch.batch_id) == (store.clock() + 90) * 1000
    [explained] = await store.explain_waits([batch], ttl=10)
    assert explained.waiting_reason.startswith("scheduled to start at ")


async def test_the_sweep_starts_it_once_when_due(
    store: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    batch = await _scheduled(store, 30)
    assert (await maintenance.sweep(store)).batches_started == 0

    advance(30)
    assert (await maintenance.sweep(store)).batches_started == 1
    assert (await maintenance.sweep(store)).batches_started == 0

    assert await redis.zscore(keys.scheduled, batch.batch_id) is None
    assert await redis.zcard(keys.queue("test.echo")) == 3  # every chunk: the window is 16
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=5)
    assert claimed is not None
    assert (await store.get_batch(batch.batch_id)).state is BatchState.RUNNING


async def test_a_batch_cancelled_before_its_start_never_starts(
    store: BatchStore, redis: Redis, keys: Keys, advance: Callable[[float], float]
) -> None:
    batch = await _scheduled(store, 30)
    cancelled = await store.cancel_batch(batch.batch_id)
    assert cancelled.state is BatchState.CANCELLED
    assert cancelled.counts.cancelled == 5

    advance(30)
    assert (await maintenance.sweep(store)).batches_started == 0
    assert await redis.zscore(keys.scheduled, batch.batch_id) is None
    assert await redis.zcard(keys.queue("test.echo")) == 0


async def test_a_past_start_time_is_now(store: BatchStore, redis: Redis, keys: Keys) -> None:
    batch = await _scheduled(store, -5)
    assert batch.scheduled_start is None
    assert await redis.zcard(keys.scheduled) == 0
    assert await redis.zcard(keys.queue("test.echo")) == 3


async def test_the_loop_counts_the_batches_it_started(
    store: BatchStore, advance: Callable[[float], float]
) -> None:
    await _scheduled(store, 30)
    advance(30)
    registry = CollectorRegistry()
    metrics = MaintenanceMetrics(registry)
    loop = asyncio.create_task(maintenance.maintenance_loop(store, 0.01, metrics))

    async def counted() -> float | None:
        return registry.get_sample_value("batchd_scheduled_batches_started_total") or None

    try:
        assert await poll(counted, within=10) == 1
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
