"""Every ARQ internal that batchd.worker.arq_worker relies on, pinned (docs/design.md,
"ARQ, and what batchd relies on"). An ARQ upgrade that changes one fails here, naming it
and what depends on it; re-read the new code, adapt arq_worker, then update the pin."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import uuid
from typing import Any

import arq
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from batchd.core import jobs
from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.arq_worker import BatchdWorker
from batchd.worker.handler import Handler, ItemContext

# arq.Worker methods whose code arq_worker depends on, the first 16 hex digits of the
# SHA-256 of their source in arq 0.28.0, and what depends on it.
PINNED = {
    "__init__": (
        "edfb0cd7e05e77cf",
        "assigns self.queue_name (arq_worker's property setter) and derives "
        "health_check_key from it",
    ),
    "main": (
        "45ca1591c9717466",
        "awaits self._poll_iteration() in its loop; in burst mode stops when "
        "zcard(self.queue_name) is 0 (arq_worker points it at a served queue with jobs)",
    ),
    "_poll_iteration": (
        "f8d39d823a0a59f2",
        "replaced whole by BatchdWorker._poll_iteration (which reads every served queue): "
        "carry over whatever the new version does",
    ),
    "start_jobs": (
        "b45797cfa40bed7f",
        "replaced whole by BatchdWorker.start_jobs and _start_job (its look and mark as "
        "core/lua/start_job.lua): carry over whatever the new version does",
    ),
    "run_job": (
        "589a19059ff84ee7",
        "runs in the job's task (the job's queue in context); Retry re-scores the job "
        "through finish_job",
    ),
    "finish_job": ("903f09c92830d3fd", "zrem/zincrby on self.queue_name: the job's queue"),
    "finish_failed_job": ("3e16087f318a7acf", "zrem on self.queue_name: the job's queue"),
    "handle_sig": ("985ff7ba01aa8f04", "cancels the job tasks and the main task (close)"),
    "handle_sig_wait_for_completion": (
        "8f161d86834cc74e",
        "SIGTERM/SIGINT drain: BatchdWorker sets `draining` before it, and calls it for "
        "the first signal only (it starts an unreferenced task per call)",
    ),
    "close": (
        "5bcc9cb356680829",
        "BatchdWorker.close repeats its steps (gather tasks, delete the health check, "
        "on_shutdown, close the pool)",
    ),
    "heart_beat": ("2e9959bea66dc551", "called once per poll by BatchdWorker._poll_iteration"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_arq_code_batchd_relies_on_is_unchanged(name: str) -> None:
    pinned, reliance = PINNED[name]
    source = inspect.getsource(getattr(arq.Worker, name))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == pinned, f"arq.Worker.{name} changed; batchd relies on it: {reliance}"


async def _nothing(ctx: dict[Any, Any]) -> None:
    return None


async def test_the_arq_attributes_and_keys_batchd_relies_on_exist(redis_url: str) -> None:
    worker = arq.Worker(
        functions=[arq.func(_nothing, name="nothing")],
        queue_name="q",
        redis_settings=arq.connections.RedisSettings.from_dsn(redis_url),
        handle_signals=False,
    )
    for attribute in [
        "allow_pick_jobs",
        "job_counter",
        "max_jobs",
        "queue_read_limit",
        "tasks",
        "sem",
        "burst",
        "_handle_signals",
        "_pool",
        "ctx",
        "on_shutdown",
        "health_check_key",
        "in_progress_timeout_s",
    ]:
        assert hasattr(worker, attribute), f"arq.Worker.{attribute} is gone"
    assert in_progress_key_prefix == "arq:in-progress:", "arq's in-progress key prefix moved"
    assert job_key_prefix == jobs.JOB_KEY_PREFIX, "arq's job key prefix moved"


def _recorder(name: str, order: list[str]) -> Handler:
    async def run(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        order.append(name)
        return {}

    return Handler(name=name, run=run)


async def _submit(store: BatchStore, handler: str, priority: int) -> str:
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    options = BatchOptions(chunk_size=10, priority=priority)
    session = await store.begin_upload(BatchSpec(batch_id, handler, options, {}))
    await session.add_items([NewItem(f"i{n}", b"{}") for n in range(10)])
    await session.commit()
    return batch_id


async def test_a_worker_takes_jobs_across_its_queues_in_priority_order(
    redis: Redis, redis_url: str
) -> None:
    settings = Settings(
        redis_url=redis_url, key_prefix=f"arq{uuid.uuid4().hex[:8]}:", worker_max_chunks=1
    )
    store = BatchStore(redis, Keys(settings.key_prefix))
    order: list[str] = []
    handlers = {name: _recorder(name, order) for name in ("test.early", "test.urgent")}
    await _submit(store, "test.early", priority=0)
    # Submitted later, its queue read second (by name), but of a higher priority: first.
    await _submit(store, "test.urgent", priority=5)
    worker = build_worker(settings, burst=True, handlers=handlers, poll_delay=0.01)
    assert isinstance(worker, BatchdWorker)
    assert worker.queues == [Keys(settings.key_prefix).queue(n) for n in sorted(handlers)]
    try:
        await asyncio.wait_for(worker.async_run(), 30)
    finally:
        await worker.close()
    assert order == ["test.urgent"] * 10 + ["test.early"] * 10
    # Each job was finished in its own queue: none is left anywhere.
    for name in handlers:
        assert await redis.zcard(Keys(settings.key_prefix).queue(name)) == 0
