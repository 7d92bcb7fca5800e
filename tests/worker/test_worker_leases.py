"""Leases as a chunk sees them: a lease that cannot be renewed goes stale and the chunk
starts no more items; once it is taken over, the chunk stops, though what finishes in
flight is still recorded. An in-process worker whose renewals the test cuts off, against
the private Redis; the test plays the worker that takes the chunk over."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from support.polling import poll

from batchd.core.config import Settings
from batchd.core.domain import (
    BatchOptions,
    BatchSpec,
    BatchState,
    ItemOutcome,
    ItemState,
    ItemView,
    NewItem,
)
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler, ItemContext


def _settings(redis_url: str, concurrency: int = 2) -> Settings:
    # No maintenance sweeps of the worker's own: a takeover is the test's doing.
    return Settings(
        redis_url=redis_url,
        key_prefix=f"wl{uuid.uuid4().hex[:10]}:",
        worker_concurrency=concurrency,
        lease_ttl=0.6,
        maintenance_interval=3600.0,
    )


async def _batch(store: BatchStore, items: int, **options: Any) -> str:
    """A committed batch of `items` items for test.gated, in one chunk."""
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    session = await store.begin_upload(
        BatchSpec(batch_id, "test.gated", BatchOptions(chunk_size=10, **options), {})
    )
    await session.add_items(NewItem(f"i{n}", json.dumps({}).encode()) for n in range(items))
    await session.commit()
    return batch_id


class _Gated:
    """A handler whose attempts wait on their gate (or `release`), noting the items
    started and the attempts abandoned (cancelled), with an event once two of each."""

    def __init__(self, gates: Mapping[str, asyncio.Event] | None = None) -> None:
        self.gates = gates
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.abandoned: list[str] = []
        self.both_in_flight = asyncio.Event()
        self.both_abandoned = asyncio.Event()

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.started.append(ctx.custom_id)
        if len(self.started) == 2:
            self.both_in_flight.set()
        try:
            if self.gates is None:
                await self.release.wait()
            elif ctx.custom_id in self.gates:
                await self.gates[ctx.custom_id].wait()
        except asyncio.CancelledError:
            self.abandoned.append(ctx.custom_id)
            if len(self.abandoned) == 2:
                self.both_abandoned.set()
            raise
        return {}


class _Renewals:
    """Cuts the worker's lease renewals off from Redis while `cut_off` is true."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cut_off = False
        renew = BatchStore.renew_leases

        async def renewals(store: BatchStore, claims: Sequence[Any], ttl: float) -> list[Any]:
            if self.cut_off:
                raise RedisConnectionError("this worker cannot reach Redis")
            return await renew(store, claims, ttl)

        monkeypatch.setattr(BatchStore, "renew_leases", renewals)


async def test_a_stale_lease_starts_nothing_and_a_lost_one_ends_the_chunk(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(redis_url)
    keys = Keys(settings.key_prefix)
    store = BatchStore(redis, keys)
    gated = _Gated({"i0": asyncio.Event(), "i1": asyncio.Event()})
    renewals = _Renewals(monkeypatch)
    batch_id = await _batch(store, 6)

    async def state_of(custom_id: str) -> ItemState:
        items, _ = await store.list_items(batch_id, 100, "", [])
        return next(i.state for i in items if i.custom_id == custom_id)

    async def lease_expired() -> bool | None:
        expiry = await redis.zscore(keys.leases, keys.lease_member(batch_id, 0))
        return True if expiry is not None and expiry < time.time() * 1000 else None

    worker = build_worker(
        settings, extra_handlers=[Handler(name="test.gated", run=gated.run)], poll_delay=0.01
    )
    running = asyncio.create_task(worker.async_run())
    try:
        await gated.both_in_flight.wait()
        renewals.cut_off = True
        # Renewals fail: before the claim can lapse, the attempts in flight are abandoned
        # (they would otherwise run beside the chunk's next holder) and nothing starts.
        await gated.both_abandoned.wait()
        await poll(lease_expired)
        assert gated.started == ["i0", "i1"]
        assert ItemState.SUCCEEDED not in {await state_of("i0"), await state_of("i1")}

        # Another worker takes the chunk over: everything not recorded is its now.
        taken = await store.claim_chunk(batch_id, 0, lease_ttl=60)
        assert taken is not None
        assert [c for _, c, _ in taken.items] == ["i0", "i1", "i2", "i3", "i4", "i5"]
        renewals.cut_off = False  # the next renewal learns that the claim is lost

        async def job_ended() -> bool | None:
            return True if not worker.job_tasks else None

        await poll(job_ended)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
    assert gated.started == ["i0", "i1"]  # nothing else, ever, from the worker that lost it

    # The new holder runs the chunk, the abandoned items included; each counts once.
    now = time.time()
    outcomes = [
        ItemOutcome(index, ItemState.SUCCEEDED, 1, now, now, output_json=b"{}")
        for index, _, _ in taken.items
    ]
    result = await store.record_outcomes(batch_id, 0, outcomes, token=taken.token, release=True)
    assert result.held
    assert result.state == BatchState.COMPLETED
    batch = await store.get_batch(batch_id)
    assert (batch.counts.succeeded, batch.counts.total) == (6, 6)
    items: list[ItemView]
    items, _ = await store.list_items(batch_id, 100, "", [])
    assert {i.state for i in items} == {ItemState.SUCCEEDED}


@pytest.mark.parametrize("block_size", [1, 2], ids=["items", "blocks"])
async def test_a_lease_back_from_stale_runs_the_abandoned_items_again(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, block_size: int
) -> None:
    # Redis away for longer than a lease, nobody taking the chunk over: the attempts in
    # flight (one item per call, or a block per call) are abandoned when the lease goes
    # stale, and run again once a renewal says the chunk is still ours.
    settings = _settings(redis_url)  # no reaper: the lease lapses, nobody takes it
    store = BatchStore(redis, Keys(settings.key_prefix))
    gated = _Gated()
    renewals = _Renewals(monkeypatch)
    batch_id = await _batch(store, 4, block_size=block_size)

    async def completed() -> bool | None:
        batch = await store.get_batch(batch_id)
        return True if batch.state == BatchState.COMPLETED else None

    async def gated_block(items: Sequence[tuple[dict[str, Any], ItemContext]]) -> list[Any]:
        return list(await asyncio.gather(*(gated.run(params, ctx) for params, ctx in items)))

    handler = Handler(name="test.gated", run=gated.run, run_many=gated_block)
    worker = build_worker(settings, extra_handlers=[handler], poll_delay=0.01)
    running = asyncio.create_task(worker.async_run())
    try:
        await gated.both_in_flight.wait()
        renewals.cut_off = True
        await gated.both_abandoned.wait()
        assert gated.started == ["i0", "i1"]
        gated.release.set()  # from here on, attempts end at once
        renewals.cut_off = False
        await poll(completed)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
    assert sorted(gated.abandoned) == ["i0", "i1"]
    assert sorted(gated.started) == ["i0", "i0", "i1", "i1", "i2", "i3"]
    batch = await store.get_batch(batch_id)
    assert (batch.counts.succeeded, batch.counts.total) == (4, 4)


async def test_a_job_whose_claim_was_lost_with_redis_writes_runs_again(
    redis: Redis, redis_url: str
) -> None:
    # A failover to a replica that missed the last writes (or a restart from an AOF that
    # missed them) can lose a claim while its job runs: the chunk is queued again, and
    # that job, finishing, would take the chunk's only way to run with it.
    settings = _settings(redis_url, concurrency=4)
    keys = Keys(settings.key_prefix)
    store = BatchStore(redis, keys)
    first_run = asyncio.Event()
    gate = asyncio.Event()
    runs: list[str] = []

    async def gated(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        runs.append(ctx.custom_id)
        first_run.set()
        await gate.wait()
        return {}

    batch_id = await _batch(store, 3)
    # Everything batchd wrote before the claim, to be put back as the failover would.
    before_claim = {key: await redis.dump(key) for key in await redis.keys(f"{keys.prefix}*")}

    async def completed() -> bool | None:
        batch = await store.get_batch(batch_id)
        return True if batch.state == BatchState.COMPLETED else None

    worker = build_worker(
        settings, extra_handlers=[Handler(name="test.gated", run=gated)], poll_delay=0.01
    )
    running = asyncio.create_task(worker.async_run())
    try:
        await first_run.wait()
        async with redis.pipeline(transaction=True) as pipe:
            for key in await redis.keys(f"{keys.prefix}*"):
                pipe.delete(key)
            for key, value in before_claim.items():
                pipe.restore(key, 0, value, replace=True)
            await pipe.execute()
        gate.set()
        await poll(completed)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
    batch = await store.get_batch(batch_id)
    assert (batch.counts.succeeded, batch.counts.total) == (3, 3)
    assert sorted(set(runs)) == ["i0", "i1", "i2"]
    assert runs.count("i0") == 2  # its first run's outcome went with the claim
