"""The ARQ job codec: msgpack only, and chunk jobs that ARQ itself reads and runs."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, job_key_prefix
from arq.worker import Worker, func
from redis.asyncio import Redis

from batchd.core import jobs
from batchd.core.domain import BatchRecord, BatchState, ItemCounts, ItemOutcome, ItemState
from batchd.core.store import BatchStore

# arq's default job expiry (batchd's is longer: DEFAULT_JOB_EXPIRY).
ARQ_EXPIRY = expires_extra_ms / 1000

# The conftest fixture: new_batch(total=7, chunk_size=3) -> the committed batch.
NewBatch = Callable[..., Awaitable[BatchRecord]]


def test_serialize_round_trips_without_pickle() -> None:
    data = {"t": 2, "f": "run_chunk", "a": ("b-1", 3), "k": {}, "et": 1_700_000_000_000}
    assert jobs.deserialize(jobs.serialize(data)) == {**data, "a": ["b-1", 3]}
    # A failed job's exception is kept as text; anything else unknown is refused.
    assert jobs.deserialize(jobs.serialize({"r": KeyError("x")})) == {"r": "KeyError: 'x'"}
    with pytest.raises(TypeError):
        jobs.serialize({"r": object()})


def test_the_job_key_prefix_is_arqs() -> None:
    # batchd.core.jobs writes job keys without importing arq (the server does not).
    assert job_key_prefix == jobs.JOB_KEY_PREFIX, "arq.constants.job_key_prefix changed"


def test_a_job_outlives_the_longest_completion_window() -> None:
    # A batch whose handler no live worker serves keeps its jobs until its window closes.
    assert jobs.DEFAULT_JOB_EXPIRY > 30 * 86400


async def test_a_chunk_job_is_what_enqueue_job_stores(redis: Redis) -> None:
    arq = ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    job_id, queue = f"probe-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    assert await arq.enqueue_job(jobs.RUN_CHUNK, "b-1", 4, _job_id=job_id, _queue_name=queue)
    theirs = await redis.get(f"arq:job:{job_id}")
    their_score = await redis.zscore(queue, job_id)
    their_ttl = await redis.pttl(f"arq:job:{job_id}")
    assert theirs is not None
    assert their_score is not None

    ours = jobs.chunk_job(job_id, "b-1", 4, now_ms=int(their_score), expiry=ARQ_EXPIRY)
    assert ours.key == f"arq:job:{job_id}"
    assert ours.payload == theirs  # same bytes: same enqueue time, same fields
    assert ours.score_ms == their_score
    assert ours.expires_ms - 1000 < their_ttl <= ours.expires_ms
    await redis.delete(ours.key, queue)


async def test_a_deferred_chunk_job_is_what_enqueue_job_stores(redis: Redis) -> None:
    arq = ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    job_id, queue = f"probe-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    due = datetime.now(UTC) + timedelta(minutes=10)
    assert await arq.enqueue_job(
        jobs.RUN_CHUNK, "b-1", 4, _job_id=job_id, _queue_name=queue, _defer_until=due
    )
    theirs = jobs.deserialize(await redis.get(f"arq:job:{job_id}"))
    their_score = await redis.zscore(queue, job_id)
    their_ttl = await redis.pttl(f"arq:job:{job_id}")
    assert their_score is not None

    ours = jobs.chunk_job(
        job_id, "b-1", 4, now_ms=theirs["et"], defer_until_ms=int(their_score), expiry=ARQ_EXPIRY
    )
    assert ours.payload == await redis.get(f"arq:job:{job_id}")
    assert ours.score_ms == their_score
    assert ours.expires_ms - 1000 < their_ttl <= ours.expires_ms
    await redis.delete(ours.key, queue)


async def test_an_arq_worker_runs_the_committed_chunks(
    store: BatchStore, redis: Redis, new_batch: NewBatch
) -> None:
    batch = await new_batch(10, chunk_size=4)
    ran: list[tuple[str, int]] = []

    async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> None:
        ran.append((batch_id, chunk))
        claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=60)
        assert claimed is not None
        outcomes = [
            ItemOutcome(index, ItemState.SUCCEEDED, 1, None, None, params)
            for index, _, params in claimed.items
        ]
        await store.record_outcomes(batch_id, chunk, outcomes, token=claimed.token, release=True)

    pool = ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    worker = Worker(
        functions=[func(run_chunk, name=jobs.RUN_CHUNK)],
        redis_pool=pool,
        queue_name=store.keys.queue("test.echo"),
        burst=True,
        handle_signals=False,
        poll_delay=0.01,
        keep_result=0,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
    )
    await worker.main()  # burst: returns once the queue is empty

    assert sorted(ran) == [(batch.batch_id, n) for n in range(3)]
    assert (worker.jobs_complete, worker.jobs_failed) == (3, 0)
    done = await store.get_batch(batch.batch_id)
    assert (done.state, done.counts) == (BatchState.COMPLETED, ItemCounts(succeeded=10))
    items, _ = await store.list_items(batch.batch_id, 10, "", [])
    assert [i.output_json for i in items] == [b'{"n":%d}' % n for n in range(10)]
