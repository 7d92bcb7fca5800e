"""Redis refusing writes: full (maxmemory under noeviction), unable to persist (MISCONF)
or a replica (READONLY). A submit is refused with a code a client can act on, leaves
nothing behind, and goes through once Redis takes writes again (docs/operations.md,
"When Redis is unreachable or full")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from support.faults import wait_for_handler
from support.in_process_server import client_of, running_server
from support.processes import ServiceProcess
from support.redis_server import RedisServer

from batchd.client import AsyncClient, BatchdError, BatchState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

HANDLER = "chaos.append"
RETRY = {"max_attempts": 5, "min_backoff": 0.05, "max_backoff": 0.5}


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()  # no append-only file: snapshots are the test's doing


@pytest.fixture
async def admin(private_redis: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(private_redis.url)
    yield redis
    await redis.aclose()


def items(count: int) -> list[tuple[str, dict[str, Any]]]:
    # Long custom_ids: the batch's size in Redis is mostly theirs.
    return [(f"item-{n:06d}-".ljust(64, "x"), {"ms": 1}) for n in range(count)]


async def submit(client: AsyncClient, how: str, batch_id: str, count: int) -> str:
    options = {"chunk_size": 500, "retry_policy": RETRY}
    if how == "submit":
        result = await client.submit(
            HANDLER, items(count), batch_id=batch_id, request_id=batch_id, options=options
        )
    else:
        result = await client.upload(
            HANDLER, items(count), batch_id=batch_id, request_id=batch_id, options=options
        )
    return result.batch.batch_id


async def assert_nothing_written(client: AsyncClient, admin: Redis, batch_id: str) -> None:
    with pytest.raises(BatchdError) as missing:
        await client.get(batch_id)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert all(batch.batch_id != batch_id for batch in (await client.list_page()).items)
    assert [key async for key in admin.scan_iter(match=f"*{batch_id}*")] == []


async def run_to_end(client: AsyncClient, batch_id: str, total: int) -> None:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.1):
        last = progress
    assert last is not None
    assert last.state == BatchState.COMPLETED
    assert last.counts.succeeded == total


@pytest.mark.parametrize("how", ["submit", "upload"])
async def test_a_full_redis_refuses_a_submit_whole_then_takes_it(
    client: AsyncClient, workers: Callable[..., ServiceProcess], admin: Redis, how: str
) -> None:
    workers(concurrency=20)
    await wait_for_handler(client, HANDLER)
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", used + 256 * 1024)
    batch_id = f"full-{how}"
    with pytest.raises(BatchdError) as refused:
        await submit(client, how, batch_id, 8000)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert refused.value.retry_after is not None
    assert refused.value.retry_after > 0
    assert "full" in refused.value.message
    await assert_nothing_written(client, admin, batch_id)  # what it staged was dropped

    await admin.config_set("maxmemory", 0)
    assert await submit(client, how, batch_id, 8000) == batch_id
    await run_to_end(client, batch_id, 8000)


async def test_a_redis_that_cannot_persist_refuses_submits_until_it_can(
    client: AsyncClient,
    workers: Callable[..., ServiceProcess],
    admin: Redis,
    private_redis: RedisServer,
) -> None:
    workers(concurrency=20)
    await wait_for_handler(client, HANDLER)
    # A directory where the snapshot should go: the rename that ends a BGSAVE fails,
    # whoever runs the test (root writes anywhere).
    blocker = Path(private_redis.directory) / "dump.rdb"
    blocker.mkdir()
    await admin.config_set("save", "3600 1")  # snapshots configured: MISCONF applies
    await admin.bgsave()
    await snapshot_done(admin, "err")
    with pytest.raises(BatchdError) as refused:
        await submit(client, "upload", "misconf", 100)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
    assert "MISCONF" in refused.value.message
    await assert_nothing_written(client, admin, "misconf")

    blocker.rmdir()
    await admin.bgsave()
    await snapshot_done(admin, "ok")
    assert await submit(client, "upload", "misconf", 100) == "misconf"
    await run_to_end(client, "misconf", 100)


async def snapshot_done(admin: Redis, status: str) -> None:
    """Waits for the BGSAVE under way to end with `status` (Redis's own state: polled)."""
    async with asyncio.timeout(30):
        while True:
            info = await admin.info("persistence")
            if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == status:
                return
            await asyncio.sleep(0.05)


async def test_a_redis_demoted_to_a_replica_refuses_submits_until_promoted(
    workers: Callable[..., ServiceProcess],
    private_redis: RedisServer,
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    workers(concurrency=5)  # publishes the handler on private_redis
    other = redis_server_factory()
    other_admin = Redis.from_url(other.url)
    try:
        async with running_server(other.url) as server, client_of(server) as client:
            # Demoted, as a failover demotes a primary: a replica of private_redis, with
            # its data (the workers' catalog among them).
            await other_admin.replicaof("127.0.0.1", private_redis.port)
            async with asyncio.timeout(30):
                # Another process's state: there is nothing to subscribe to.
                while (await other_admin.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await wait_for_handler(client, HANDLER)
            with pytest.raises(BatchdError) as refused:
                await submit(client, "upload", "readonly", 10)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
            assert "read-only" in refused.value.message
            with pytest.raises(BatchdError) as missing:
                await client.get("readonly")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND

            await other_admin.replicaof("NO", "ONE")  # promoted again
            assert await submit(client, "upload", "readonly", 10) == "readonly"
            assert (await client.get("readonly")).total_items == 10
    finally:
        await other_admin.aclose()
