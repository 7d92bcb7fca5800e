"""Dispatch control end to end — real gRPC server, real worker, private Redis: pause and
resume, cancel of a paused batch, admission limits, UpdateBatch, fairness between a big
and a small batch, and priority."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from redis.asyncio import Redis

from batchd.client import AsyncClient, BatchdError, BatchProgress, BatchState
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.server.app import start_server
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler, ItemContext

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub


@dataclass
class Starts:
    """A handler that records when each item starts (per batch), then waits for `gate`
    if given, then takes `delay`."""

    delay: float = 0.0
    gate: asyncio.Event | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, params: Mapping[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.times.setdefault(ctx.batch_id, []).append(time.monotonic())
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # the item's work
        return {}


@dataclass
class Service:
    client: AsyncClient
    stub: BatchServiceAsyncStub
    redis: Redis
    keys: Keys
    starts: Starts


@contextlib.asynccontextmanager
async def service(redis_url: str, starts: Starts, **overrides: Any) -> AsyncIterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        key_prefix=f"dc{uuid.uuid4().hex[:8]}:",
        watch_min_interval=0.01,  # tests follow batches closely
        watch_min_heartbeat=0.01,
        **overrides,
    )
    server = await start_server(settings, port=0, metrics_port=0)
    handler = Handler(name="test.starts", run=starts.run)
    worker = build_worker(settings, extra_handlers=[handler], poll_delay=0.01)
    task = asyncio.create_task(worker.async_run())
    redis = Redis.from_url(redis_url)
    try:
        await worker.started.wait()
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            try:
                stub: BatchServiceAsyncStub = batch_service_pb2_grpc.BatchServiceStub(channel)
                yield Service(client, stub, redis, Keys(settings.key_prefix), starts)
            finally:
                await channel.close()
    finally:
        # Let the jobs still queued (those of cancelled batches end at their claim) run
        # out, so that stopping the worker cuts no job short.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await _idle(worker, redis, Keys(settings.key_prefix))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
        await server.stop(grace=0)
        await redis.aclose()


async def _idle(worker: Any, redis: Redis, keys: Keys) -> None:
    def busy() -> bool:
        return any(not task.done() for task in worker.tasks.values())

    while await redis.zcard(keys.queue("test.starts")) or busy():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def items(count: int, prefix: str = "i") -> list[tuple[str, dict[str, Any]]]:
    return [(f"{prefix}{n}", {}) for n in range(count)]


async def until(client: AsyncClient, batch_id: str, done: Any) -> BatchProgress:
    """Follows the batch until `done(progress)` (or it ends); returns that snapshot."""
    async for progress in client.watch(batch_id, min_interval=0.02):
        if done(progress) or progress.state.is_terminal:
            return progress
    raise AssertionError("the watch ended early")


async def final(client: AsyncClient, batch_id: str) -> BatchProgress:
    return await until(client, batch_id, lambda p: False)


async def batch_jobs(svc: Service, batch_id: str) -> list[bytes]:
    members = await svc.redis.zrange(svc.keys.queue("test.starts"), 0, -1)
    return [m for m in members if bytes(m).startswith(f"{batch_id}:".encode())]


async def test_pause_stops_new_starts_and_resume_completes(redis_url: str) -> None:
    async with service(redis_url, Starts(delay=0.01), worker_concurrency=8) as svc:
        client = svc.client
        submitted = await client.submit("test.starts", items(300), options={"chunk_size": 10})
        batch_id = submitted.batch.batch_id
        await until(client, batch_id, lambda p: p.counts.succeeded >= 30)

        paused = await client.pause(batch_id)
        assert paused.state == BatchState.PAUSED
        assert (await client.pause(batch_id)).state == BatchState.PAUSED  # idempotent
        # In effect once no item runs: holders finished what they had started and handed
        # the rest back.
        quiet = await until(client, batch_id, lambda p: p.counts.running + p.counts.claimed == 0)
        took_effect = time.monotonic()
        assert quiet.state == BatchState.PAUSED
        # While it is paused the workers run another batch to its end, and take (and park)
        # every job of the paused one.
        other = await client.submit("test.starts", items(100), options={"chunk_size": 10})
        assert (await final(client, other.batch.batch_id)).counts.succeeded == 100
        while await batch_jobs(svc, batch_id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        got = await client.get(batch_id)
        assert got.state == BatchState.PAUSED
        assert got.counts.succeeded + got.counts.pending == 300
        assert got.counts.pending > 0

        resumed_at = time.monotonic()
        resumed = await client.resume(batch_id)
        assert resumed.state == BatchState.RUNNING
        done = await final(client, batch_id)
        assert done.state == BatchState.COMPLETED
        assert done.counts.succeeded == 300 == done.total_items
        starts = svc.starts.times[batch_id]
        assert len(starts) == 300
        assert not [t for t in starts if took_effect <= t < resumed_at]
        print(
            f"\n[pause] {got.counts.succeeded} done at the pause, none started in "
            f"{resumed_at - took_effect:.3f}s paused, {len(starts)} in all"
        )


async def test_a_paused_batch_is_cancelled(redis_url: str) -> None:
    async with service(redis_url, Starts(delay=0.01), worker_concurrency=4) as svc:
        client = svc.client
        submitted = await client.submit("test.starts", items(100), options={"chunk_size": 5})
        batch_id = submitted.batch.batch_id
        await until(client, batch_id, lambda p: p.counts.succeeded >= 5)
        await client.pause(batch_id)
        cancelled = await client.cancel(batch_id)
        assert cancelled.state in (BatchState.CANCELLING, BatchState.CANCELLED)
        done = await final(client, batch_id)
        assert done.state == BatchState.CANCELLED
        assert done.counts.succeeded + done.counts.cancelled == 100
        assert done.counts.cancelled > 0
        with pytest.raises(BatchdError) as refused:
            await client.resume(batch_id)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def quota_details(error: grpc.aio.AioRpcError) -> tuple[float, list[str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    delay, subjects = 0.0, []
    for detail in status.details:
        retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
        if detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Unpack(quota):
            subjects += [v.subject for v in quota.violations]
    return delay, subjects


async def keys_of(svc: Service, batch_id: str) -> list[bytes]:
    return [key async for key in svc.redis.scan_iter(match=f"*{batch_id}*", count=1000)]


async def test_admission_limits_refuse_with_retry_and_quota_details(redis_url: str) -> None:
    limits = {"max_pending_items": 100, "max_batch_items": 60}
    async with service(redis_url, Starts(), **limits) as svc:
        client = svc.client
        # One batch beyond max_batch_items: SubmitBatch.
        request = batch_service_pb2.SubmitBatchRequest(
            handler="test.starts",
            batch_id="too-big-" + uuid.uuid4().hex[:8],
            items=[batch_pb2.Item(custom_id=f"i{n}", params_json=b"{}") for n in range(61)],
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await svc.stub.SubmitBatch(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay, subjects = quota_details(refused.value)
        assert delay > 0
        assert subjects == ["max_batch_items"]
        assert await keys_of(svc, request.batch_id) == []

        # 50 pending (scheduled an hour ahead: admitted now, none of them run), then an
        # upload that would pass 100: refused as its chunks stage, and nothing of it is
        # kept. (Paused after its submit instead, the batch could finish items first.)
        later = datetime.now(UTC) + timedelta(hours=1)
        held = await client.submit(
            "test.starts", items(50), options={"chunk_size": 10}, start_time=later
        )
        upload_id = "too-many-" + uuid.uuid4().hex[:8]
        with pytest.raises(BatchdError) as exhausted:
            await client.upload(
                "test.starts", items(55), batch_id=upload_id, options={"chunk_size": 10}
            )
        assert exhausted.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exhausted.value.retry_after is not None
        assert exhausted.value.retry_after > 0
        assert [q.subject for q in exhausted.value.quota_violations] == ["max_pending_items"]
        assert await keys_of(svc, upload_id) == []
        # Once the held batch is gone from the pending count, the same upload goes in.
        await client.cancel(held.batch.batch_id)
        await final(client, held.batch.batch_id)
        result = await client.upload(
            "test.starts", items(55), batch_id=upload_id, options={"chunk_size": 10}
        )
        assert (await final(client, result.batch.batch_id)).counts.succeeded == 55


async def test_update_batch_changes_options_and_rejects_bad_masks(redis_url: str) -> None:
    # The items started before the pause wait for the gate: the batch cannot end first.
    gate = asyncio.Event()
    async with service(redis_url, Starts(gate=gate)) as svc:
        client = svc.client
        submitted = await client.submit("test.starts", items(20), options={"chunk_size": 5})
        batch_id = submitted.batch.batch_id
        await client.pause(batch_id)
        updated = await client.update(batch_id, priority=7, max_per_second=25.0, max_concurrent=3)
        assert (updated.options.priority, updated.options.max_per_second) == (7, 25.0)
        got = await client.get(batch_id)
        assert (got.options.priority, got.options.max_concurrent, got.options.burst) == (7, 3, 0)
        assert got.options.chunk_size == 5

        for paths, options in (
            ([], batch_pb2.BatchOptions(priority=1)),
            (["chunk_size"], batch_pb2.BatchOptions(chunk_size=3)),
            (["priority"], batch_pb2.BatchOptions(priority=5000)),
            (["max_per_second"], batch_pb2.BatchOptions(max_per_second=-1)),
        ):
            request = batch_service_pb2.UpdateBatchRequest(batch_id=batch_id, options=options)
            request.update_mask.paths.extend(paths)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await svc.stub.UpdateBatch(request)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        with pytest.raises(BatchdError) as none_given:
            await client.update(batch_id)
        assert none_given.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (await client.get(batch_id)).options.priority == 7
        gate.set()
        await client.resume(batch_id)
        assert (await final(client, batch_id)).counts.succeeded == 20


@pytest.mark.slow
async def test_a_small_batch_behind_a_big_one_finishes_first(redis_url: str) -> None:
    big_size = 200_000
    async with service(redis_url, Starts(), worker_concurrency=200) as svc:
        client = svc.client
        big = await client.upload("test.starts", items(big_size), options={"chunk_size": 50})
        big_id = big.batch.batch_id
        await until(client, big_id, lambda p: p.counts.succeeded >= 5_000)
        submitted_at = time.monotonic()
        small = await client.submit("test.starts", items(10), options={"chunk_size": 50})
        done = await final(client, small.batch.batch_id)
        latency = time.monotonic() - submitted_at
        assert done.state == BatchState.COMPLETED
        behind = await client.get(big_id)
        print(
            f"\n[fairness] 10-item batch behind a {big_size}-item one: done in "
            f"{latency:.3f}s; the big one at {behind.counts.succeeded}/{big_size}"
        )
        assert behind.state == BatchState.RUNNING
        assert latency < 5.0
        await client.cancel(big_id)
        await final(client, big_id)


async def test_a_higher_priority_batch_starts_before_the_queued_chunks_of_a_lower_one(
    redis_url: str,
) -> None:
    # One chunk at a time, so the order of chunk starts is the dispatch order.
    overrides = {"worker_concurrency": 2, "worker_max_chunks": 1, "dispatch_window": 2}
    async with service(redis_url, Starts(delay=0.02), **overrides) as svc:
        client = svc.client
        low = await client.submit("test.starts", items(40), options={"chunk_size": 2})
        low_id = low.batch.batch_id
        await until(client, low_id, lambda p: p.counts.succeeded >= 2)
        high = await client.submit(
            "test.starts", items(4, "h"), options={"chunk_size": 2, "priority": 5}
        )
        submitted_at = time.monotonic()
        done = await final(client, high.batch.batch_id)
        assert done.state == BatchState.COMPLETED
        low_now = await client.get(low_id)
        assert low_now.state == BatchState.RUNNING
        first_high = min(svc.starts.times[high.batch.batch_id])
        # Low chunks started after the high batch came in and before its first item: at
        # most the one the worker had in hand or already read from the queue.
        low_between = [t for t in svc.starts.times[low_id] if submitted_at <= t < first_high]
        assert len(low_between) <= 2 * 2, low_between
        assert low_now.counts.succeeded + low_now.counts.running + low_now.counts.claimed < 40
        await client.cancel(low_id)
        await final(client, low_id)


@pytest.mark.slow
async def test_running_counts_the_items_in_flight_and_claimed_the_rest(redis_url: str) -> None:
    # A worker of 4 slots holds a chunk of 10 slow items: 4 run, 6 wait in the worker.
    # The holder reports what it has in flight with each renewal (every lease_ttl / 3).
    async with service(redis_url, Starts(delay=3.0), worker_concurrency=4, lease_ttl=1.5) as svc:
        client = svc.client
        submitted = await client.submit("test.starts", items(10), options={"chunk_size": 10})
        batch_id = submitted.batch.batch_id
        seen = await until(client, batch_id, lambda p: p.counts.running > 0)
        assert (seen.counts.running, seen.counts.claimed, seen.counts.pending) == (4, 6, 0)
        await client.cancel(batch_id)  # the holder learns of it at its next record
        done = await final(client, batch_id)
        assert done.counts.succeeded + done.counts.cancelled == 10
        assert done.counts.running == done.counts.claimed == 0


async def test_a_pause_reaches_chunks_waiting_for_max_concurrent(redis_url: str) -> None:
    # Chunks claimed but held back by max_concurrent record nothing: they learn of the
    # pause from their slot calls (and renewals), and hand their items back at once.
    async with service(redis_url, Starts(delay=0.5), worker_concurrency=8) as svc:
        client = svc.client
        options = {"chunk_size": 20, "max_concurrent": 2}
        submitted = await client.submit("test.starts", items(200), options=options)
        batch_id = submitted.batch.batch_id
        busy = await until(client, batch_id, lambda p: p.counts.running == 2)
        assert busy.counts.claimed > 0  # other chunks wait for the batch's two slots
        await client.pause(batch_id)
        quiet = await until(client, batch_id, lambda p: p.counts.running + p.counts.claimed == 0)
        assert quiet.state == BatchState.PAUSED
        assert quiet.counts.succeeded <= 4  # what was in flight at the pause, at most twice
        await client.cancel(batch_id)
