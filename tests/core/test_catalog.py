"""The handler catalog and worker liveness."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from batchd.core import codec
from batchd.core.domain import BatchOptions, HandlerSpec, RetryPolicy
from batchd.core.store import BatchStore

ECHO = HandlerSpec(
    name="test.echo",
    description="Echoes its params.",
    params_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    default_options=BatchOptions(chunk_size=7, retry_policy=RetryPolicy(max_attempts=3)),
)
SLEEP = HandlerSpec(name="test.sleep", description="Sleeps.", params_schema={"type": "object"})


def at(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    monkeypatch.setattr(codec, "now_ms", lambda: ms)


async def test_a_published_handler_can_be_read_back(store: BatchStore) -> None:
    assert await store.get_handler("test.echo") is None
    await store.publish_worker("w1", [ECHO, SLEEP], ttl=10)
    assert await store.get_handler("test.echo") == ECHO
    assert await store.get_handler("test.sleep") == SLEEP


async def test_handlers_count_their_live_workers(store: BatchStore) -> None:
    await store.publish_worker("w1", [ECHO, SLEEP], ttl=10)
    await store.publish_worker("w2", [ECHO], ttl=10)
    statuses = await store.list_handlers(ttl=10)
    assert [(s.spec, s.live_workers) for s in statuses] == [(ECHO, 2), (SLEEP, 1)]
    assert all(s.last_seen is not None for s in statuses)

    await store.remove_worker("w2")
    statuses = await store.list_handlers(ttl=10)
    assert [s.live_workers for s in statuses] == [1, 1]


async def test_a_silent_worker_stops_counting(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = codec.now_ms()
    at(monkeypatch, now - 30_000)  # w-old's last heartbeat: 30 s ago
    await store.publish_worker("w-old", [ECHO, SLEEP], ttl=10)
    at(monkeypatch, now - 1_000)
    await store.publish_worker("w-new", [ECHO], ttl=10)
    at(monkeypatch, now)

    statuses = {s.spec.name: s for s in await store.list_handlers(ttl=10)}
    assert statuses["test.echo"].live_workers == 1
    assert statuses["test.echo"].last_seen == (now - 1_000) / 1000
    # Nobody serves test.sleep now, but the catalog remembers when someone did.
    assert statuses["test.sleep"].live_workers == 0
    assert statuses["test.sleep"].last_seen == (now - 30_000) / 1000


async def test_long_gone_workers_are_pruned(
    store: BatchStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = codec.now_ms()
    at(monkeypatch, now - 3_600_000)
    await store.publish_worker("w-gone", [ECHO], ttl=10)
    at(monkeypatch, now)
    await store.publish_worker("w-here", [ECHO], ttl=10)
    assert await redis.zrange(store.keys.workers, 0, -1) == [b"w-here"]


async def test_the_worker_key_expires_with_its_ttl(store: BatchStore, redis: Redis) -> None:
    await store.publish_worker("w1", [ECHO], ttl=10)
    ttl = await redis.pttl(store.keys.worker("w1"))
    assert 9_000 < ttl <= 10_000
