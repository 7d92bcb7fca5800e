"""A committed batch wakes idle workers at once: they need not wait for their next poll
(BATCHD_WORKER_POLL_INTERVAL), which these tests set far beyond their deadline."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from support.faults import wait_for_handler
from support.in_process_worker import running_worker
from support.polling import poll
from support.redis_server import RedisServer, RedisServerFactory

from batchd.client import AsyncClient, BatchState
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.server.app import start_server

POLL_INTERVAL = 600.0  # no test waits that long: only a wake-up runs their batches


@contextlib.asynccontextmanager
async def service(url: str, prefix: str, max_chunks: int = 0) -> AsyncIterator[AsyncClient]:
    """An in-process server and a worker polling every POLL_INTERVAL seconds, subscribed
    to its wake-ups, running at most `max_chunks` chunk jobs (0: its default); a client
    of the server."""
    settings = Settings(
        redis_url=url, host="127.0.0.1", key_prefix=prefix, worker_max_chunks=max_chunks
    )
    server = await start_server(settings, port=0, metrics_port=0)
    try:
        async with (
            running_worker(settings, poll_delay=POLL_INTERVAL),
            AsyncClient(f"127.0.0.1:{server.port}") as client,
        ):
            yield client
    finally:
        await server.stop(grace=0)


async def completes(client: AsyncClient, items: int) -> None:
    submitted = await client.submit("noop", [(f"n-{i}", {}) for i in range(items)])
    async with asyncio.timeout(20):
        async for progress in client.watch(submitted.batch.batch_id, min_interval=0.05):
            last = progress
    assert last.state == BatchState.COMPLETED
    assert last.counts.succeeded == items


async def subscribed(redis: Redis, channel: str) -> None:
    """Until one client (the worker) subscribes to `channel`."""

    async def one() -> bool | None:
        counts = dict(await redis.pubsub_numsub(channel))
        return counts.get(channel.encode(), 0) == 1 or None

    await poll(one)


async def test_each_new_batch_wakes_the_idle_worker(redis_server: RedisServer) -> None:
    prefix = f"wake-{secrets.token_hex(4)}:"
    async with (
        service(redis_server.url, prefix) as client,
        Redis.from_url(redis_server.url) as redis,
    ):
        await subscribed(redis, Keys(prefix).wake)
        # Each batch after the first can only be found by a wake-up: the worker's look
        # at the queue on subscribing is spent, and its next poll is minutes away.
        for items in (1, 250, 1):
            await completes(client, items)


async def test_a_worker_with_room_again_looks_at_the_queue_at_once(
    redis_server: RedisServer,
) -> None:
    prefix = f"wake-{secrets.token_hex(4)}:"
    async with (
        service(redis_server.url, prefix, max_chunks=1) as client,
        Redis.from_url(redis_server.url) as redis,
    ):
        await subscribed(redis, Keys(prefix).wake)
        busy = await client.submit("sleep", [("long", {"seconds": 2.0})])

        async def claimed() -> bool | None:
            return (await client.get(busy.batch.batch_id)).state == BatchState.RUNNING or None

        await poll(claimed)
        # The second batch's wake-up comes while the worker's one chunk job runs: it can
        # take no job then, and its next poll is minutes away. It looks again when the
        # running job ends.
        await completes(client, 1)


@pytest.mark.slow
async def test_wake_ups_resume_after_redis_restarts(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory()
    prefix = f"wake-{secrets.token_hex(4)}:"
    async with service(server.url, prefix) as client:
        async with Redis.from_url(server.url) as redis:
            await subscribed(redis, Keys(prefix).wake)
        server.restart()  # empty: the subscription and the handler catalog are gone
        async with Redis.from_url(server.url) as redis:
            await subscribed(redis, Keys(prefix).wake)
        await wait_for_handler(client, "noop")  # published again at the next heartbeat
        for items in (1, 1):  # the second only by a wake-up, as above
            await completes(client, items)
