"""A chunk job's in-progress mark (ARQ's, which keeps other workers from starting the job)
lasts MARK_LEASES leases, renewed while the job runs: a worker killed between starting
a job and claiming its chunk (no lease then, for the reaper to find lapsed) holds the
chunk back that long, not for ARQ's job timeout of an hour."""

from __future__ import annotations

import asyncio
import time
import uuid

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from support.in_process_worker import running_worker
from support.polling import poll

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.arq_worker import MARK_LEASES

LEASE_TTL = 1.0
MARK_MS = MARK_LEASES * LEASE_TTL * 1000


async def submit_sleeps(store: BatchStore, seconds: float) -> str:
    """A batch of one chunk: two `sleep` items of `seconds`."""
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    session = await store.begin_upload(BatchSpec(batch_id, "sleep", BatchOptions(), {}))
    params = f'{{"seconds": {seconds}}}'.encode()
    await session.add_items([NewItem("a", params), NewItem("b", params)])
    await session.commit()
    return batch_id


def settings_for(redis_url: str) -> Settings:
    prefix = f"marks{uuid.uuid4().hex[:8]}:"
    return Settings(redis_url=redis_url, key_prefix=prefix, lease_ttl=LEASE_TTL)


async def finished(store: BatchStore, batch_id: str) -> bool | None:
    batch = await store.get_batch(batch_id)
    return batch.counts.finished == batch.total_items or None


async def test_a_running_jobs_mark_is_short_and_renewed(redis: Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    keys = Keys(settings.key_prefix)
    store = BatchStore(redis, keys)
    async with running_worker(settings, poll_delay=0.02):
        # Items of twice the mark's life: the mark must be renewed to outlast them.
        batch_id = await submit_sleeps(store, 2 * MARK_LEASES * LEASE_TTL)
        mark = in_progress_key_prefix + keys.chunk_job_id(batch_id, 0)

        async def marked() -> int | None:
            ttl: int = await redis.pttl(mark)
            return ttl if ttl > 0 else None

        await poll(marked)
        started = time.monotonic()
        ttls = []
        while not await finished(store, batch_id):
            ttl = await redis.pttl(mark)
            if ttl <= 0 and await finished(store, batch_id):
                break  # the job ended between the two reads, and its mark with it
            assert ttl > 0, f"the mark lapsed {time.monotonic() - started:.1f} s into the job"
            ttls.append(ttl)
            await asyncio.sleep(0.1)  # a sampling rate, not a synchronisation
    assert max(ttls) <= MARK_MS
    assert time.monotonic() - started > MARK_MS / 1000  # the mark outlived one life


async def test_a_job_a_dead_worker_marked_runs_once_the_mark_lapses(
    redis: Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url)
    keys = Keys(settings.key_prefix)
    store = BatchStore(redis, keys)
    batch_id = await submit_sleeps(store, 0)
    # What a worker killed right after starting the job leaves: its mark, no claim.
    mark = in_progress_key_prefix + keys.chunk_job_id(batch_id, 0)
    await redis.set(mark, b"1", px=round(MARK_MS))
    marked_at = time.monotonic()
    async with running_worker(settings, poll_delay=0.02):
        await poll(lambda: finished(store, batch_id), within=MARK_MS / 1000 + 20)
    assert time.monotonic() - marked_at >= MARK_MS / 1000 - 0.1
