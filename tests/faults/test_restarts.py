"""The service survives its parts restarting: Redis killed and restarted from its AOF,
Redis unreachable for a few seconds, the gRPC server restarted under a watcher."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from support.faults import applied, wait_for_handler
from support.net import find_free_port
from support.processes import ServiceProcess, server
from support.redis_server import RedisServer

from batchd.client import AsyncClient, BatchProgress, BatchState, ItemState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RETRY = {"max_attempts": 5, "min_backoff": 0.05, "max_backoff": 0.5}


async def run_until(client: AsyncClient, batch_id: str, finished: int) -> None:
    async for progress in client.watch(batch_id, min_interval=0.05):
        if progress.counts.finished >= finished:
            return
    raise AssertionError("the batch ended before the fault was injected")


async def watch_to_end(client: AsyncClient, batch_id: str) -> BatchProgress:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.1):
        c = progress.counts
        assert c.pending + c.claimed + c.running + c.finished == progress.total_items
        last = progress
    assert last is not None
    return last


async def all_succeeded(client: AsyncClient, batch_id: str, total: int) -> None:
    states = Counter([item.state async for item in client.items(batch_id, page_size=1000)])
    assert states == {ItemState.SUCCEEDED: total}


async def test_redis_killed_and_restarted_from_aof(
    client: AsyncClient,
    workers: Callable[..., ServiceProcess],
    private_redis: RedisServer,
    chaos_log: Path,
) -> None:
    workers(concurrency=20)
    await wait_for_handler(client, "chaos.append")
    items = ((f"a{i}", {"ms": 5}) for i in range(5000))
    submitted = await client.upload(
        "chaos.append", items, options={"chunk_size": 100, "retry_policy": RETRY}
    )
    batch_id = submitted.batch.batch_id
    await run_until(client, batch_id, 1000)
    private_redis.kill()  # SIGKILL: at most the last second of writes is lost
    private_redis.start()  # same port, same directory: replays the AOF
    final = await watch_to_end(client, batch_id)
    assert final.state == BatchState.COMPLETED
    await all_succeeded(client, batch_id, 5000)
    keys = Counter(key for key, _ in applied(chaos_log))
    assert len(keys) == 5000
    print(f"\naof restart: {sum(keys.values()) - 5000} items executed again")


async def test_redis_unreachable_for_seconds(
    client: AsyncClient, workers: Callable[..., ServiceProcess], private_redis: RedisServer
) -> None:
    workers(concurrency=20)
    await wait_for_handler(client, "chaos.append")
    items = ((f"u{i}", {"ms": 5}) for i in range(4000))
    submitted = await client.upload(
        "chaos.append", items, options={"chunk_size": 100, "retry_policy": RETRY}
    )
    batch_id = submitted.batch.batch_id
    await run_until(client, batch_id, 800)
    with private_redis.stopped():
        await asyncio.sleep(3)  # the outage itself: how long Redis stays away
    final = await watch_to_end(client, batch_id)
    assert final.state == BatchState.COMPLETED
    await all_succeeded(client, batch_id, 4000)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_server_restarted_under_a_watcher(
    workers: Callable[..., ServiceProcess],
    private_redis: RedisServer,
    tmp_path: Path,
    how: str,
) -> None:
    port = find_free_port()
    env = {
        "BATCHD_REDIS_URL": private_redis.url,
        "BATCHD_PORT": str(port),
        "BATCHD_HOST": "127.0.0.1",
    }
    process = server(env, tmp_path / "server.log").start()
    try:
        workers(concurrency=10)
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            await wait_for_handler(client, "chaos.append")
            items = ((f"s{i}", {"ms": 10}) for i in range(3000))
            submitted = await client.upload("chaos.append", items, options={"chunk_size": 100})
            batch_id = submitted.batch.batch_id
            seen: list[BatchProgress] = []
            restarted = False
            async for progress in client.watch(batch_id, min_interval=0.05):
                seen.append(progress)
                if not restarted and progress.counts.finished >= 500:
                    if how == "SIGTERM":
                        process.terminate()
                    else:
                        process.kill()
                    process = server(env, tmp_path / "server.log").start()
                    restarted = True
            assert restarted
            assert seen[-1].state == BatchState.COMPLETED
            assert seen[-1].counts.succeeded == 3000
            finished = [p.counts.finished for p in seen]
            assert finished == sorted(finished)  # the watcher carried on where it was
        process.terminate()
    finally:
        process.stop()  # a failed test leaves no server running (nor a warning later)
