"""The completion-callback outbox: an event filed by the very script call that ends a
batch with a callback (none without one), a new event for each end (a redrive's), and
claims that hide an event for their lease, count its tries and let only the latest claim
retry or drop it."""

from __future__ import annotations

import json
from collections.abc import Callable

from redis.asyncio import Redis

from batchd.core.callbacks import CallbackOutbox, sign, verify
from batchd.core.domain import (
    BatchState,
    ItemOutcome,
    ItemState,
)
from batchd.core.keys import Keys
from batchd.core.store import BatchStore

from .conftest import NewBatch

URL = "https://hooks.example/batchd"
LEASE = 60.0


async def run_all(store: BatchStore, batch_id: str, total: int, state: ItemState) -> None:
    claimed = await store.claim_chunk(batch_id, 0, lease_ttl=LEASE)
    assert claimed is not None
    output = b"{}" if state is ItemState.SUCCEEDED else None
    outcomes = [ItemOutcome(i, state, 1, 1.0, 2.0, output) for i in range(total)]
    await store.record_outcomes(batch_id, 0, outcomes, token=claimed.token, release=True)


async def filed(redis: Redis, keys: Keys) -> dict[str, dict[str, object]]:
    records = await redis.hgetall(keys.callback_events)  # type: ignore[misc]
    return {k.decode(): json.loads(v) for k, v in records.items()}


async def test_the_end_of_a_batch_files_one_event_with_its_summary(
    store: BatchStore,
    new_batch: NewBatch,
    redis: Redis,
    keys: Keys,
    advance: Callable[[float], float],
) -> None:
    batch = await new_batch(total=3, chunk_size=3, callback_url=URL)
    assert await filed(redis, keys) == {}
    advance(2)
    await run_all(store, batch.batch_id, 3, ItemState.SUCCEEDED)
    ended = await store.get_batch(batch.batch_id)
    assert ended.state is BatchState.COMPLETED
    assert ended.end_time is not None
    ((event_id, record),) = (await filed(redis, keys)).items()
    assert event_id == f"{batch.batch_id}:{int(batch.create_time * 1000)}:1"
    assert record == {
        "id": event_id,
        "batch": batch.batch_id,
        "tenant": "default",
        "url": URL,
        "filed": int(ended.end_time * 1000),
        "state": int(BatchState.COMPLETED),
        "handler": "test.echo",
        "total": 3,
        "succeeded": 3,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "created": int(batch.create_time * 1000),
        "started": int(ended.start_time * 1000) if ended.start_time else None,
        "ended": int(ended.end_time * 1000),
    }
    # Due at once, in the outbox.
    assert await redis.zscore(keys.callbacks, event_id) == int(ended.end_time * 1000)


async def test_a_batch_without_a_callback_files_nothing(
    store: BatchStore, new_batch: NewBatch, redis: Redis, keys: Keys
) -> None:
    batch = await new_batch(total=2, chunk_size=2)
    await run_all(store, batch.batch_id, 2, ItemState.SUCCEEDED)
    await store.cancel_batch((await new_batch(total=2, chunk_size=2)).batch_id)
    assert await filed(redis, keys) == {}
    assert await redis.zcard(keys.callbacks) == 0


async def test_a_cancel_files_the_event_and_a_redrive_files_a_new_one(
    store: BatchStore,
    new_batch: NewBatch,
    redis: Redis,
    keys: Keys,
    advance: Callable[[float], float],
) -> None:
    batch = await new_batch(total=2, chunk_size=2, callback_url=URL)
    await run_all(store, batch.batch_id, 2, ItemState.FAILED)
    first = await filed(redis, keys)
    assert [r["failed"] for r in first.values()] == [2]
    advance(5)
    await store.retry_items(batch.batch_id, [], "")
    assert await filed(redis, keys) == first  # reopened: nothing new until it ends again
    await run_all(store, batch.batch_id, 2, ItemState.SUCCEEDED)
    both = await filed(redis, keys)
    (second_id,) = set(both) - set(first)
    assert second_id.endswith(":2")
    assert (both[second_id]["succeeded"], both[second_id]["failed"]) == (2, 0)

    cancelled = await new_batch(total=4, chunk_size=4, callback_url=URL)
    await store.cancel_batch(cancelled.batch_id)
    records = [r for r in (await filed(redis, keys)).values() if r["batch"] == cancelled.batch_id]
    assert [(r["state"], r["cancelled"]) for r in records] == [(int(BatchState.CANCELLED), 4)]


async def test_a_claim_hides_the_event_for_its_lease_and_the_latest_claim_decides(
    store: BatchStore, new_batch: NewBatch, redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    outbox = CallbackOutbox(redis, keys)
    batch = await new_batch(total=1, chunk_size=1, callback_url=URL)
    await run_all(store, batch.batch_id, 1, ItemState.SUCCEEDED)
    now = clock()
    (first,) = await outbox.claim(now, lease=10, limit=5)
    assert (first.tries, first.event.batch_id) == (1, batch.batch_id)
    assert (first.event.url, first.event.succeeded) == (URL, 1)
    assert await outbox.claim(now + 9, lease=10, limit=5) == []  # held by the first claim
    # The first holder died: the event comes due again when its lease ends.
    (second,) = await outbox.claim(now + 10, lease=10, limit=5)
    assert second.tries == 2
    assert second.event == first.event
    # The stale holder may neither retry nor drop it ...
    assert not await outbox.retry_at(first, now + 11)
    assert not await outbox.drop(first)
    assert not await outbox.release(first, now + 11)
    # ... the latest may.
    assert await outbox.retry_at(second, now + 30)
    assert await outbox.claim(now + 29, lease=10, limit=5) == []
    (third,) = await outbox.claim(now + 30, lease=10, limit=5)
    assert third.tries == 3
    # Released unattempted: due again then, and that try is not counted.
    assert await outbox.release(third, now + 35)
    assert await outbox.claim(now + 34, lease=10, limit=5) == []
    (third,) = await outbox.claim(now + 35, lease=10, limit=5)
    assert third.tries == 3
    await outbox.acknowledge(third)
    assert await outbox.pending() == 0
    assert await filed(redis, keys) == {}
    assert await redis.hlen(keys.callback_tries) == 0  # type: ignore[misc]


async def test_the_body_is_a_signed_cloudevent_the_same_at_every_delivery(
    store: BatchStore, new_batch: NewBatch, redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    outbox = CallbackOutbox(redis, keys)
    batch = await new_batch(total=2, chunk_size=2, callback_url=URL)
    await run_all(store, batch.batch_id, 2, ItemState.SUCCEEDED)
    (claimed,) = await outbox.claim(clock(), lease=1, limit=5)
    (again,) = await outbox.claim(clock() + 1, lease=1, limit=5)
    body = claimed.event.body()
    assert again.event.body() == body
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "batchd.batch.finished"
    assert event["id"] == claimed.event.event_id
    assert event["subject"] == batch.batch_id
    assert event["data"]["state"] == "COMPLETED"
    assert event["data"]["counts"] == {"succeeded": 2, "failed": 0, "cancelled": 0, "expired": 0}
    assert event["data"]["results"]["cli"] == f"batchd results {batch.batch_id}"
    secret = b"s" * 32
    header = sign(secret, body)
    assert verify(secret, body, header)
    assert not verify(b"t" * 32, body, header)
    assert not verify(secret, body + b" ", header)
    assert not verify(secret, body, sign(secret, body, timestamp=int(clock())))  # an hour old
    assert not verify(secret, body, "garbage")
