"""Retries through the store: a failed attempt is recorded PENDING with its next attempt
time, the chunk job ends, and a deferred job brings the item back. In-process ARQ workers
against the private Redis, each test with a key prefix of its own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.core.config import Settings
from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemState,
    ItemView,
    NewItem,
    RetryPolicy,
)
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.handler import Code, Handler, ItemContext, PermanentError, RetryableError
from batchd.worker.retry import JITTER


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, "key_prefix": f"wr{uuid.uuid4().hex[:10]}:"}
    return Settings(**{**values, **overrides})


async def submit(
    store: BatchStore,
    handler: str,
    params: Sequence[Mapping[str, Any]],
    policy: RetryPolicy,
    *,
    item_timeout: float = 0.0,
) -> str:
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    options = BatchOptions(chunk_size=10, retry_policy=policy, item_timeout=item_timeout)
    session = await store.begin_upload(BatchSpec(batch_id, handler, options, {}))
    await session.add_items(NewItem(f"i{n}", json.dumps(p).encode()) for n, p in enumerate(params))
    await session.commit()
    return batch_id


async def run_burst(settings: Settings, handlers: Sequence[Handler]) -> None:
    """Runs a worker until the queue, deferred jobs included, is empty."""
    worker = build_worker(settings, burst=True, extra_handlers=handlers, poll_delay=0.01)
    try:
        await worker.async_run()
    finally:
        await worker.close()


async def items_of(store: BatchStore, batch_id: str) -> list[ItemView]:
    items, _ = await store.list_items(batch_id, 1000, "", [])
    return items


@pytest.mark.slow
async def test_a_retry_is_a_deferred_job_that_honours_retry_after(
    redis: Redis, redis_url: str
) -> None:
    retry_after = 1.0
    settings = settings_for(redis_url)
    store = BatchStore(redis, Keys(settings.key_prefix))
    runs: list[tuple[int, float, float]] = []  # (attempt, start, end)

    async def busy_once(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        start = time.time()
        if ctx.attempt == 1:
            runs.append((ctx.attempt, start, time.time()))
            raise RetryableError("busy", code=Code.RESOURCE_EXHAUSTED, retry_after=retry_after)
        runs.append((ctx.attempt, start, time.time()))
        return {"attempt": ctx.attempt}

    policy = RetryPolicy(max_attempts=3, min_backoff=0.01)
    batch_id = await submit(store, "test.busy", [{}], policy)
    worker = build_worker(
        settings, extra_handlers=[Handler(name="test.busy", run=busy_once)], poll_delay=0.01
    )
    running = asyncio.create_task(worker.async_run())
    try:

        async def waiting() -> ItemView | None:
            (item,) = await items_of(store, batch_id)
            return item if item.next_attempt_time is not None else None

        item = await poll(waiting)
        failed_at = runs[0][2]
        assert item.state == ItemState.PENDING
        assert (item.attempts, item.error_code, item.error_message) == (
            1,
            Code.RESOURCE_EXHAUSTED,
            "busy",
        )
        assert item.next_attempt_time is not None
        assert failed_at + retry_after - 0.001 <= item.next_attempt_time
        assert item.next_attempt_time <= failed_at + retry_after * (1 + JITTER) + 0.1

        async def no_job_running() -> bool | None:
            return True if not worker.job_tasks else None

        await poll(no_job_running)  # the wait holds no job and no slot
        assert len(runs) == 1

        async def finished() -> BatchRecord | None:
            batch = await store.get_batch(batch_id)
            return batch if batch.state.is_terminal else None

        batch = await poll(finished)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
    assert batch.state == BatchState.COMPLETED
    (item,) = await items_of(store, batch_id)
    assert (item.state, item.attempts, item.next_attempt_time) == (ItemState.SUCCEEDED, 2, None)
    (_, _, first_end), (_, second_start, _) = runs
    assert second_start - first_end >= retry_after


async def test_a_poison_item_fails_after_max_attempts_with_its_last_error(
    redis: Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url)
    store = BatchStore(redis, Keys(settings.key_prefix))
    calls: dict[str, list[int]] = {}

    async def poison(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        calls.setdefault(ctx.custom_id, []).append(ctx.attempt)
        if params.get("poison"):
            raise RetryableError(f"failure {ctx.attempt}", code=Code.UNAVAILABLE)
        return {}

    policy = RetryPolicy(max_attempts=4, min_backoff=0.01, max_doublings=2)
    batch_id = await submit(store, "test.poison", [{"poison": True}, {}], policy)
    await run_burst(settings, [Handler(name="test.poison", run=poison)])

    batch = await store.get_batch(batch_id)
    assert (batch.state, batch.counts.failed, batch.counts.succeeded) == (
        BatchState.COMPLETED,
        1,
        1,
    )
    poisoned, healthy = await items_of(store, batch_id)
    assert (poisoned.state, poisoned.attempts, poisoned.error_code, poisoned.error_message) == (
        ItemState.FAILED,
        4,
        Code.UNAVAILABLE,
        "failure 4",
    )
    assert poisoned.next_attempt_time is None
    assert calls == {"i0": [1, 2, 3, 4], "i1": [1]}  # the healthy item ran once
    assert (healthy.state, healthy.attempts) == (ItemState.SUCCEEDED, 1)


async def test_a_permanent_error_is_not_retried(redis: Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    store = BatchStore(redis, Keys(settings.key_prefix))
    calls: list[int] = []

    async def refuse(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        calls.append(ctx.attempt)
        raise PermanentError("no such thing", code=Code.NOT_FOUND)

    policy = RetryPolicy(max_attempts=5, min_backoff=0.01)
    batch_id = await submit(store, "test.refuse", [{}], policy)
    await run_burst(settings, [Handler(name="test.refuse", run=refuse)])
    (item,) = await items_of(store, batch_id)
    assert (item.state, item.attempts, item.error_code, item.error_message) == (
        ItemState.FAILED,
        1,
        Code.NOT_FOUND,
        "no such thing",
    )
    assert calls == [1]


async def test_an_item_timeout_is_retried_like_a_retryable_error(
    redis: Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url)
    store = BatchStore(redis, Keys(settings.key_prefix))
    calls: list[int] = []
    never = asyncio.Event()

    async def hang_once(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await never.wait()
        return {"attempt": ctx.attempt}

    policy = RetryPolicy(max_attempts=2, min_backoff=0.01)
    batch_id = await submit(store, "test.hang", [{}], policy, item_timeout=0.05)
    await run_burst(settings, [Handler(name="test.hang", run=hang_once)])
    (item,) = await items_of(store, batch_id)
    assert (item.state, item.attempts) == (ItemState.SUCCEEDED, 2)
    assert calls == [1, 2]  # the timed-out attempt counted as one
