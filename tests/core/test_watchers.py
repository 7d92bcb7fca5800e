"""WatcherCounts over the session's private Redis, on a hand-driven clock: a tenant's
streams counted across servers, a lapsed server's dropped, and each server's counts
mended by its heartbeat whatever happened to them in Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.core.errors import Exhausted
from batchd.core.keys import Keys
from batchd.core.watchers import WatcherCounts

from .conftest import Clock

TTL = 15.0


def counts(redis: Redis, keys: Keys, clock: Clock, server: str, limit: int = 3) -> WatcherCounts:
    return WatcherCounts(redis, keys, limit=limit, ttl=TTL, server=server, clock=clock)


async def fields(redis: Redis, keys: Keys, tenant: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.tenant_watchers(tenant))  # type: ignore[misc]
    return {bytes(k).decode(): int(v) for k, v in raw.items()}


async def test_streams_count_across_servers_up_to_the_limit(
    redis: Redis, keys: Keys, clock: Clock
) -> None:
    one, two = counts(redis, keys, clock, "one"), counts(redis, keys, clock, "two")
    await one.heartbeat()
    await two.heartbeat()
    await one.open("acme")
    await one.open("acme")
    await two.open("acme")
    with pytest.raises(Exhausted) as caught:
        await two.open("acme")
    assert caught.value.quota_subject == "tenant:acme:max_watchers"
    assert "BATCHD_TENANT_MAX_WATCHERS" in caught.value.message
    await two.open("globex")  # another tenant's streams are its own
    assert await fields(redis, keys, "acme") == {"one": 2, "two": 1}

    await one.close("acme")
    await two.open("acme")
    assert await fields(redis, keys, "acme") == {"one": 1, "two": 2}
    await two.close("acme")
    await two.close("acme")
    assert await fields(redis, keys, "acme") == {"one": 1}  # a field goes at 0


async def test_a_lapsed_servers_streams_stop_counting(
    redis: Redis, keys: Keys, clock: Clock
) -> None:
    dead, live = counts(redis, keys, clock, "dead"), counts(redis, keys, clock, "live")
    await dead.heartbeat()
    for _ in range(3):
        await dead.open("acme")
    await live.heartbeat()
    with pytest.raises(Exhausted):
        await live.open("acme")
    clock.advance(TTL + 1)  # `dead` says nothing more
    await live.heartbeat()
    assert await live.open_streams("acme") == 0
    await live.open("acme")
    assert await fields(redis, keys, "acme") == {"live": 1}  # its field went with it


async def test_a_heartbeat_mends_what_redis_lost(redis: Redis, keys: Keys, clock: Clock) -> None:
    server = counts(redis, keys, clock, "one")
    await server.heartbeat()
    await server.open("acme")
    await server.open("acme")
    await server.open("globex")
    await redis.delete(keys.tenant_watchers("acme"), keys.watch_servers)  # a Redis restart
    await server.close("acme")  # below 0 in Redis: dropped, not negative
    assert await fields(redis, keys, "acme") == {}
    await server.heartbeat()
    assert await fields(redis, keys, "acme") == {"one": 1}
    assert await fields(redis, keys, "globex") == {"one": 1}
    await server.close("acme")
    await server.close("globex")
    await server.heartbeat()
    assert await fields(redis, keys, "acme") == await fields(redis, keys, "globex") == {}


async def test_a_cancelled_close_is_still_written(redis: Redis, keys: Keys, clock: Clock) -> None:
    server = counts(redis, keys, clock, "one")
    await server.open("acme")
    closing = asyncio.create_task(server.close("acme"))
    await asyncio.sleep(0)  # the write is under way
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing

    async def written() -> bool | None:
        return True if await fields(redis, keys, "acme") == {} else None

    await poll(written)


async def test_withdraw_ends_a_servers_count_at_once(
    redis: Redis, keys: Keys, clock: Clock
) -> None:
    one, two = counts(redis, keys, clock, "one", limit=1), counts(redis, keys, clock, "two")
    await one.heartbeat()
    await one.open("acme")
    await one.withdraw()
    await one.close("acme")  # the stream ends after: nothing written
    assert await fields(redis, keys, "acme") == {}
    assert await two.open_streams("acme") == 0
