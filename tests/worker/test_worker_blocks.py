"""Handlers that take items in blocks (`run_many`): blocks of the batch's block_size,
one outcome per item, per-item failures retried alone, a raising block failing or
retrying all its items, item_timeout over the call. In-process burst workers against
the private Redis, each test with a key prefix of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, ItemState, ItemView, NewItem, RetryPolicy
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.handler import (
    BlockOutcome,
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    bulk_handler,
)

Block = Sequence[tuple[dict[str, Any], ItemContext]]
QUICK_RETRY = RetryPolicy(max_attempts=3, min_backoff=0.01, max_backoff=0.02)


def settings_for(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=f"wb{uuid.uuid4().hex[:10]}:")


async def run_burst(settings: Settings, handlers: Sequence[Handler]) -> None:
    """Runs a worker until the queue, deferred jobs included, is empty."""
    worker = build_worker(settings, burst=True, extra_handlers=handlers, poll_delay=0.01)
    try:
        await worker.async_run()
    finally:
        await worker.close()


async def submit(store: BatchStore, handler: str, count: int, **options: Any) -> str:
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    spec = BatchSpec(batch_id, handler, BatchOptions(retry_policy=QUICK_RETRY, **options), {})
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", json.dumps({"n": n}).encode()) for n in range(count))
    await session.commit()
    return batch_id


async def run(
    redis: Redis, redis_url: str, handler: Handler, count: int, **options: Any
) -> dict[str, ItemView]:
    settings = settings_for(redis_url)
    store = BatchStore(redis, Keys(settings.key_prefix))
    batch_id = await submit(store, handler.name, count, **options)
    await run_burst(settings, [handler])
    items, _ = await store.list_items(batch_id, 1000, "", [])
    return {item.custom_id: item for item in items}


def output(item: ItemView) -> Any:
    assert item.output_json is not None
    return json.loads(item.output_json)


async def test_items_run_in_blocks_of_the_batchs_size_each_with_its_output(
    redis: Redis, redis_url: str
) -> None:
    calls: list[list[str]] = []

    @bulk_handler("test.double", block_size=3)
    async def double(items: Block) -> list[BlockOutcome]:
        calls.append([ctx.custom_id for _, ctx in items])
        await asyncio.sleep(0)
        return [{"twice": params["n"] * 2} for params, _ in items]

    items = await run(redis, redis_url, double, 25, chunk_size=10, block_size=4)
    assert {i.state for i in items.values()} == {ItemState.SUCCEEDED}
    assert all(output(items[f"i{n}"]) == {"twice": 2 * n} for n in range(25))
    assert sorted(c for call in calls for c in call) == sorted(items)  # each once
    assert max(map(len, calls)) == 4
    assert len(calls) < 25


async def test_the_handlers_default_block_size_and_one_item_per_call_without_run_many(
    redis: Redis, redis_url: str
) -> None:
    sizes: list[int] = []

    @bulk_handler("test.sized", block_size=5)
    async def sized(items: Block) -> list[BlockOutcome]:
        sizes.append(len(items))
        return [{} for _ in items]

    await run(redis, redis_url, sized, 10, chunk_size=10)
    assert sizes == [5, 5]

    async def single(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        return {"n": params["n"]}

    # A stored block_size above 1 (the server refuses it for such a handler) changes
    # nothing for a handler without run_many.
    plain = Handler(name="test.plain", run=single)
    items = await run(redis, redis_url, plain, 6, chunk_size=6, block_size=3)
    assert [output(items[f"i{n}"]) for n in range(6)] == [{"n": n} for n in range(6)]


async def test_an_items_own_failure_retries_or_fails_that_item_alone(
    redis: Redis, redis_url: str
) -> None:
    attempts: dict[str, list[int]] = {}

    @bulk_handler("test.mixed", block_size=10)
    async def mixed(items: Block) -> list[BlockOutcome]:
        outcomes: list[BlockOutcome] = []
        for params, ctx in items:
            attempts.setdefault(ctx.custom_id, []).append(ctx.attempt)
            n = params["n"]
            if n == 1 and ctx.attempt == 1:
                outcomes.append(RetryableError("busy for now"))
            elif n == 2:
                outcomes.append(PermanentError("no such thing", code=Code.NOT_FOUND))
            elif n == 3:
                outcomes.append(ValueError("a bug"))
            elif n == 4:
                outcomes.append(RetryableError("always busy", code=Code.UNAVAILABLE))
            else:
                outcomes.append({"attempt": ctx.attempt})
        return outcomes

    items = await run(redis, redis_url, mixed, 8, chunk_size=8)
    assert (items["i1"].state, output(items["i1"])) == (ItemState.SUCCEEDED, {"attempt": 2})
    assert attempts["i1"] == [1, 2]
    assert (items["i2"].state, items["i2"].error_code, items["i2"].attempts) == (
        ItemState.FAILED,
        Code.NOT_FOUND,
        1,
    )
    assert (items["i3"].state, items["i3"].error_code, items["i3"].error_message) == (
        ItemState.FAILED,
        Code.UNKNOWN,
        "a bug",
    )
    assert (items["i4"].state, items["i4"].attempts, attempts["i4"]) == (
        ItemState.FAILED,
        3,
        [1, 2, 3],
    )
    for n in (0, 5, 6, 7):  # ran once, in the first block
        assert attempts[f"i{n}"] == [1]
        assert output(items[f"i{n}"]) == {"attempt": 1}


async def test_a_raising_block_fails_or_retries_every_item_in_it(
    redis: Redis, redis_url: str
) -> None:
    calls: list[list[int]] = []

    @bulk_handler("test.flaky", block_size=4)
    async def flaky(items: Block) -> list[BlockOutcome]:
        calls.append([ctx.attempt for _, ctx in items])
        if any(ctx.attempt == 1 for _, ctx in items):
            raise RetryableError("the bulk API is down", code=Code.UNAVAILABLE)
        return [{"n": params["n"]} for params, _ in items]

    items = await run(redis, redis_url, flaky, 8, chunk_size=8)
    assert {(i.state, i.attempts) for i in items.values()} == {(ItemState.SUCCEEDED, 2)}
    assert calls[:2] == [[1, 1, 1, 1], [1, 1, 1, 1]]

    @bulk_handler("test.broken", block_size=4)
    async def broken(items: Block) -> list[BlockOutcome]:
        raise KeyError("nope")

    items = await run(redis, redis_url, broken, 4, chunk_size=4)
    assert {(i.state, i.attempts, i.error_code) for i in items.values()} == {
        (ItemState.FAILED, 1, Code.UNKNOWN)
    }


async def test_a_wrong_number_of_outcomes_fails_the_block(redis: Redis, redis_url: str) -> None:
    @bulk_handler("test.short", block_size=3)
    async def short(items: Block) -> list[BlockOutcome]:
        return [{}]

    items = await run(redis, redis_url, short, 3, chunk_size=3)
    assert {(i.state, i.error_code) for i in items.values()} == {(ItemState.FAILED, Code.INTERNAL)}
    assert items["i0"].error_message == "run_many returned 1 outcomes for 3 items"


async def test_item_timeout_bounds_the_block_call(redis: Redis, redis_url: str) -> None:
    @bulk_handler("test.slow", block_size=3)
    async def slow(items: Block) -> list[BlockOutcome]:
        if items[0][1].attempt == 1:
            await asyncio.sleep(30)
        return [{} for _ in items]

    items = await run(redis, redis_url, slow, 3, chunk_size=3, item_timeout=0.2)
    assert {(i.state, i.attempts) for i in items.values()} == {(ItemState.SUCCEEDED, 2)}
