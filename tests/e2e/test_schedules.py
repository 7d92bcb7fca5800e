"""Schedules end to end — real gRPC server, real worker, private Redis: a batch submitted
with a start_time waits QUEUED (with its start time and a waiting reason) until then,
can be cancelled or paused before it starts, and keeps its schedule across a server
restart; a start_time beyond the horizon is INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.client import AsyncClient, Batch, BatchdError, BatchState
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer, start_server
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler, ItemContext

pytestmark = pytest.mark.slow

HANDLER = "test.scheduled"
# How far ahead the tests schedule their batches.
AHEAD = 1.5


@dataclass
class Starts:
    """A handler that records the wall-clock time each item of each batch starts."""

    times: dict[str, list[float]] = field(default_factory=dict)

    async def run(self, params: Mapping[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.times.setdefault(ctx.batch_id, []).append(time.time())
        return {}


@dataclass
class Service:
    settings: Settings
    server: BatchdServer
    client: AsyncClient
    redis: Redis
    keys: Keys
    starts: Starts


@contextlib.asynccontextmanager
async def service(redis_url: str) -> AsyncIterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        key_prefix=f"sc{uuid.uuid4().hex[:8]}:",
        maintenance_interval=0.05,  # scheduled batches start within a sweep of their time
        watch_min_interval=0.01,
        watch_min_heartbeat=0.01,
    )
    starts = Starts()
    server = await start_server(settings, port=0, metrics_port=0)
    worker = build_worker(
        settings, extra_handlers=[Handler(name=HANDLER, run=starts.run)], poll_delay=0.01
    )
    task = asyncio.create_task(worker.async_run())
    redis = Redis.from_url(redis_url)
    client = AsyncClient(f"127.0.0.1:{server.port}")
    svc = Service(settings, server, client, redis, Keys(settings.key_prefix), starts)
    try:
        await worker.started.wait()
        yield svc
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
        await svc.server.stop(grace=0)  # a test may have restarted it
        await redis.aclose()


def _items(count: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"i{n}", "params": {}} for n in range(count)]


async def _finished(client: AsyncClient, batch_id: str) -> Batch:
    async def probe() -> Batch | None:
        batch = await client.get(batch_id)
        return batch if batch.state.is_terminal else None

    return await poll(probe)


async def _left_schedule(svc: Service, batch_id: str) -> None:
    """Awaits the sweep that takes the batch out of the scheduled zset (its start time)."""

    async def probe() -> bool | None:
        return None if await svc.redis.zscore(svc.keys.scheduled, batch_id) else True

    await poll(probe)


async def test_a_scheduled_batch_waits_queued_then_runs_after_its_start_time(
    redis_url: str,
) -> None:
    async with service(redis_url) as svc:
        start = datetime.now(UTC) + timedelta(seconds=AHEAD)
        submitted = (await svc.client.submit(HANDLER, _items(20), start_time=start)).batch

        for batch in (
            submitted,
            await svc.client.get(submitted.batch_id),
            *[b async for b in svc.client.list() if b.batch_id == submitted.batch_id],
        ):
            assert batch.state is BatchState.QUEUED
            assert batch.scheduled_start_time is not None
            assert abs((batch.scheduled_start_time - start).total_seconds()) < 0.002
        got = await svc.client.get(submitted.batch_id)
        assert got.waiting_reason == f"scheduled to start at {start:%Y-%m-%dT%H:%M:%SZ}"
        async for progress in svc.client.watch(submitted.batch_id):
            assert progress.state is BatchState.QUEUED
            assert progress.scheduled_start_time == got.scheduled_start_time
            assert progress.waiting_reason == got.waiting_reason
            break

        done = await _finished(svc.client, submitted.batch_id)
        assert done.state is BatchState.COMPLETED
        assert done.counts.succeeded == 20
        times = svc.starts.times[submitted.batch_id]
        assert len(times) == 20
        assert min(times) >= start.timestamp()
        assert done.start_time is not None
        assert done.start_time >= start


async def test_the_completion_window_counts_from_the_start_time(redis_url: str) -> None:
    async with service(redis_url) as svc:
        start = datetime.now(UTC) + timedelta(days=2)
        batch = (
            await svc.client.submit(
                HANDLER, _items(1), start_time=start, options={"completion_window": 3600}
            )
        ).batch
        deadline = await svc.redis.zscore(svc.keys.deadlines, batch.batch_id)
        assert deadline == pytest.approx((start.timestamp() + 3600) * 1000, abs=2)
        await svc.client.cancel(batch.batch_id)


async def test_a_batch_cancelled_before_its_start_runs_nothing(redis_url: str) -> None:
    async with service(redis_url) as svc:
        start = datetime.now(UTC) + timedelta(seconds=AHEAD)
        batch = (await svc.client.submit(HANDLER, _items(10), start_time=start)).batch

        cancelled = await svc.client.cancel(batch.batch_id)

        assert cancelled.state is BatchState.CANCELLED
        assert cancelled.counts.cancelled == 10
        await _left_schedule(svc, batch.batch_id)  # its start time came and went
        assert await svc.redis.zcard(svc.keys.queue(HANDLER)) == 0
        assert batch.batch_id not in svc.starts.times
        assert (await svc.client.get(batch.batch_id)).state is BatchState.CANCELLED


async def test_a_batch_paused_before_its_start_runs_only_once_resumed(redis_url: str) -> None:
    async with service(redis_url) as svc:
        start = datetime.now(UTC) + timedelta(seconds=AHEAD)
        batch = (await svc.client.submit(HANDLER, _items(10), start_time=start)).batch

        assert (await svc.client.pause(batch.batch_id)).state is BatchState.PAUSED
        # Resumed before its start time, it goes back to waiting for it.
        resumed = await svc.client.resume(batch.batch_id)
        assert resumed.state is BatchState.QUEUED
        waiting = (await svc.client.get(batch.batch_id)).waiting_reason
        assert waiting.startswith("scheduled to start at ")
        await svc.client.pause(batch.batch_id)
        await _left_schedule(svc, batch.batch_id)
        assert (await svc.client.get(batch.batch_id)).state is BatchState.PAUSED

        resumed_at = time.time()
        await svc.client.resume(batch.batch_id)

        done = await _finished(svc.client, batch.batch_id)
        assert done.state is BatchState.COMPLETED
        assert min(svc.starts.times[batch.batch_id]) >= resumed_at


async def test_a_start_time_beyond_30_days_is_invalid(redis_url: str) -> None:
    async with service(redis_url) as svc:
        too_late = datetime.now(UTC) + timedelta(days=30, minutes=1)
        with pytest.raises(BatchdError) as raised:
            await svc.client.submit(HANDLER, _items(1), start_time=too_late)
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in raised.value.field_violations] == ["start_time"]
        with pytest.raises(BatchdError) as raised:
            await svc.client.upload(HANDLER, _items(1), start_time=too_late)
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_start_time_in_the_past_starts_at_once(redis_url: str) -> None:
    async with service(redis_url) as svc:
        past = datetime.now(UTC) - timedelta(hours=1)
        batch = (await svc.client.upload(HANDLER, _items(3), start_time=past)).batch
        assert batch.scheduled_start_time is None
        assert (await _finished(svc.client, batch.batch_id)).state is BatchState.COMPLETED


async def test_a_schedule_survives_a_server_restart(redis_url: str) -> None:
    async with service(redis_url) as svc:
        start = datetime.now(UTC) + timedelta(seconds=AHEAD)
        batch = (await svc.client.submit(HANDLER, _items(5), start_time=start)).batch
        await svc.server.stop(grace=0)

        svc.server = await start_server(svc.settings, port=0, metrics_port=0)
        async with AsyncClient(f"127.0.0.1:{svc.server.port}") as client:
            seen = await client.get(batch.batch_id)
            assert seen.state is BatchState.QUEUED
            assert seen.scheduled_start_time == batch.scheduled_start_time
            done = await _finished(client, batch.batch_id)
        assert done.state is BatchState.COMPLETED
        assert min(svc.starts.times[batch.batch_id]) >= start.timestamp()
