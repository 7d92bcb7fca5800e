"""The arq repairs of `BatchdWorker`, each against a private Redis that the test stops:
a job that could not start gives its slot back, and a job whose bookkeeping failed is
not left blocked behind its in-progress key. The client's own retries are off here, so
that these repairs are what is tested."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from support.polling import poll
from support.redis_server import RedisServer, RedisServerFactory

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import BatchdWorker, build_worker


class Rig:
    """A private Redis (append-only: its data survives stop and start), a store over it
    and an in-process worker that starts no job until told to."""

    def __init__(self, server: RedisServer, worker: BatchdWorker, store: BatchStore) -> None:
        self.server = server
        self.worker = worker
        self.store = store

    async def submit(self) -> str:
        batch_id = f"b{uuid.uuid4().hex[:12]}"
        spec = BatchSpec(batch_id, "noop", BatchOptions(chunk_size=10), {})
        session = await self.store.begin_upload(spec)
        await session.add_items(NewItem(f"i{n}", json.dumps({}).encode()) for n in range(3))
        await session.commit()
        return batch_id

    async def completed(self, batch_id: str) -> BatchRecord | None:
        batch = await self.store.get_batch(batch_id)
        return batch if batch.state == BatchState.COMPLETED else None


@pytest.fixture
async def rig(redis_server_factory: RedisServerFactory) -> AsyncIterator[Rig]:
    server = redis_server_factory(appendonly=True)
    settings = Settings(redis_url=server.url, key_prefix="wres:", worker_max_chunks=1)
    redis = Redis.from_url(server.url)
    worker = build_worker(settings, poll_delay=0.01)
    # Without the client's own retries: a command fails at once while Redis is away.
    worker.pool.connection_pool.connection_kwargs.update(retry=None, retry_on_error=[])
    worker.allow_pick_jobs = False
    running = asyncio.create_task(worker.async_run())
    await worker.started.wait()
    try:
        yield Rig(server, worker, BatchStore(redis, Keys(settings.key_prefix)))
    finally:
        if not server.is_running():
            server.start()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await redis.aclose()


async def test_a_job_that_could_not_start_gives_its_slot_back(rig: Rig) -> None:
    # arq counts a job as started before its Redis calls; with one slot, a single lost
    # count would stop this worker from ever starting another job.
    rig.server.stop()
    for _ in range(3):
        with contextlib.suppress(RedisConnectionError):
            await rig.worker.start_jobs([b"some-job"])
    assert rig.worker.job_counter == 0
    rig.server.start()

    batch_id = await rig.submit()
    rig.worker.allow_pick_jobs = True
    batch = await poll(lambda: rig.completed(batch_id))
    assert batch.counts.succeeded == 3


@pytest.mark.slow
async def test_a_job_whose_start_failed_can_run_again_at_once(rig: Rig) -> None:
    batch_id = await rig.submit()
    job_id = Keys().chunk_job_id(batch_id, 0)
    redis = rig.store.redis
    # What start_jobs does before run_job: mark the job in progress (for an hour here).
    await redis.psetex(in_progress_key_prefix + job_id, 3_600_000, b"1")

    rig.server.stop()
    started = asyncio.create_task(rig.worker.run_job(job_id, 0))
    await asyncio.sleep(0.5)  # the outage
    assert not started.done()  # it waits for Redis, to clear the key
    rig.server.start()
    await asyncio.wait_for(started, 10)
    assert not await redis.exists(in_progress_key_prefix + job_id)

    rig.worker.allow_pick_jobs = True
    batch = await poll(lambda: rig.completed(batch_id))
    assert batch.counts.succeeded == 3
