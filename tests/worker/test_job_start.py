"""How a worker starts an ARQ chunk job (`BatchdWorker._start_job`, core/lua/start_job.lua):
as arq's `start_jobs` does, a due job not in progress elsewhere is marked and started,
any other is left alone with the worker's slot given back; in one script, never ARQ's
WATCH and MULTI/EXEC. Against a private Redis, in-process workers that take no job
unless the test starts it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from support.polling import poll
from support.redis_server import RedisServerFactory

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import BatchdWorker, build_worker
from batchd.worker.handler import Handler, ItemContext

PREFIX = "wstart:"


@pytest.fixture
async def redis(redis_server_factory: RedisServerFactory) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server_factory().url)
    yield client
    await client.aclose()


class Gate:
    """`test.gated` items wait until the test opens the gate: a job that stays running."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        await self.open.wait()
        return {}


class Counted:
    """The worker's start script, counting its calls (each one round trip to Redis)."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.script(*args, **kwargs)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def workers(redis: Redis, gate: Gate) -> AsyncIterator[list[BatchdWorker]]:
    """Two workers on the same Redis, picking no job by themselves."""
    url = redis.connection_pool.connection_kwargs
    settings = Settings(
        redis_url=f"redis://{url['host']}:{url['port']}/0", key_prefix=PREFIX, worker_max_chunks=2
    )
    handlers = [Handler(name="test.gated", run=gate.run)]
    pair = [build_worker(settings, poll_delay=0.01, extra_handlers=handlers) for _ in range(2)]
    running = []
    for worker in pair:
        worker.allow_pick_jobs = False
        running.append(asyncio.create_task(worker.async_run()))
        await worker.started.wait()
    try:
        yield pair
    finally:
        gate.open.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for worker in pair:
            await worker.close()


async def submit(redis: Redis) -> str:
    store = BatchStore(redis, Keys(PREFIX))
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    spec = BatchSpec(batch_id, "test.gated", BatchOptions(chunk_size=10), {})
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", json.dumps({}).encode()) for n in range(3))
    await session.commit()
    return batch_id


async def watches(redis: Redis) -> int:
    """WATCHes Redis has run so far (arq's start_jobs makes one per job it tries)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_watch", {}).get("calls", 0))


async def test_a_due_job_starts_once_in_one_round_trip_per_try(
    redis: Redis, workers: list[BatchdWorker], gate: Gate
) -> None:
    first, second = workers
    starts = [Counted(w._start_job_script) for w in workers]
    first._start_job_script, second._start_job_script = starts
    batch_id = await submit(redis)
    job_id = Keys(PREFIX).chunk_job_id(batch_id, 0)
    mark = in_progress_key_prefix + job_id
    before = await watches(redis)
    # Both read the same queue head; the first to start the job wins it.
    due = await first._read_queues()
    assert await second._read_queues() == due == [job_id.encode()]
    await first.start_jobs(due)
    assert job_id in first.tasks
    ttl = await redis.pttl(mark)
    assert 0 < ttl <= first.in_progress_timeout_s * 1000
    await second.start_jobs(due)
    assert job_id not in second.tasks
    assert second.job_counter == 0  # the slot it took for the try is back
    # The job stays queued while it runs: the worker running it does not try it again.
    await first.start_jobs(await first._read_queues())
    assert [s.calls for s in starts] == [1, 1]
    assert first.job_counter == 1
    assert await watches(redis) == before  # none of arq's WATCH and MULTI/EXEC

    gate.open.set()
    store = BatchStore(redis, Keys(PREFIX))

    async def completed() -> BatchRecord | None:
        batch = await store.get_batch(batch_id)
        return batch if batch.state == BatchState.COMPLETED else None

    assert (await poll(completed)).counts.succeeded == 3


async def test_a_job_queued_for_later_or_gone_is_not_started(
    redis: Redis, workers: list[BatchdWorker]
) -> None:
    worker = workers[0]
    queue = Keys(PREFIX).queue("test.gated")
    later, gone = (f"b{uuid.uuid4().hex[:12]}:0:q" for _ in range(2))
    now_ms = int(time.time() * 1000)
    await redis.zadd(queue, {later: now_ms - 1, gone: now_ms - 1})
    due = await worker._read_queues()
    assert sorted(due) == sorted([later.encode(), gone.encode()])
    # Since read: one run again with a delay, the other done and removed (arq's cases).
    await redis.zadd(queue, {later: now_ms + 60_000})
    await redis.zrem(queue, gone)
    await worker.start_jobs(due)
    assert worker.tasks == {}
    assert worker.job_counter == 0
    assert await redis.exists(*(in_progress_key_prefix + job for job in (later, gone))) == 0
