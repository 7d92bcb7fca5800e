"""A small batch behind a big one: how long the small one takes, end to end.

Starts a private Valkey, `batchd-server` and `batchd-worker` as subprocesses, uploads a
big `noop` batch while the worker is paused (Redis memory per pending item: the growth
of Redis's stored bytes, `bench.service.redis_stored_bytes`, over that upload, divided
by its items), resumes the worker, waits until the batch runs at steady state, measures
Redis commands per item there (INFO commandstats over a few seconds), then submits a
10-item batch and reports how long it takes to complete while the big one still runs.

    .venv/bin/python -m bench.fairness --items 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from redis.asyncio import Redis

from batchd.client import AsyncClient, BatchState
from bench.service import (
    Service,
    paused,
    redis_memory_growth,
    report,
    running_service,
    wait_for_handler,
)


def items(count: int, prefix: str) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"{prefix}-{i}", {}


async def _commands(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


async def run(count: int, chunk_size: int, service: Service) -> dict[str, float]:
    redis = Redis.from_url(service.redis_url)
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "noop")
        with paused(service.worker_pids):
            upload = client.upload("noop", items(count, "big"), options={"chunk_size": chunk_size})
            big, grown = await redis_memory_growth(service.redis_url, upload)
        big_id = big.batch.batch_id
        async for progress in client.watch(big_id, min_interval=0.1):
            if progress.counts.succeeded >= min(count // 20, 50_000):
                break
        # Steady state: Redis commands per item over a few seconds.
        before, done_before = await _commands(redis), (await client.get(big_id)).counts.succeeded
        await asyncio.sleep(3.0)  # the measuring interval
        after, done_after = await _commands(redis), (await client.get(big_id)).counts.succeeded
        calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        per_item = sum(calls.values()) / max(done_after - done_before, 1)
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]

        submitted = time.perf_counter()
        small = await client.submit("noop", list(items(10, "small")))
        async for progress in client.watch(small.batch.batch_id, min_interval=0.02):
            last = progress
        latency = time.perf_counter() - submitted
        behind = await client.get(big_id)
        await client.cancel(big_id)
    await redis.aclose()
    if last.state != BatchState.COMPLETED:
        raise RuntimeError(f"the small batch did not complete: {last}")
    print("steady-state commands per item:", round(per_item, 2), "top:", top)
    return {
        "big_items": count,
        "small_latency_seconds": latency,
        "big_done_when_small_finished": behind.counts.succeeded,
        "steady_items_per_second": (done_after - done_before) / 3.0,
        "redis_commands_per_item": per_item,
        "redis_bytes_per_pending_item": grown / count,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service() as service:
        figures = asyncio.run(run(args.items, args.chunk_size, service))
    report(figures, args.json)


if __name__ == "__main__":
    main()
