"""Fair shares across tenants: a tenant's one batch beside another tenant's hundred.

Starts a private Valkey, `batchd-server` and `batchd-worker` as subprocesses and commits
batches straight through the store (`BatchSpec.tenant`; no credentials needed): first
the small tenant's batch alone, timed from its commit to its last item; then the big
tenant's `--batches` batches of `sleep` items, and once they run, the small tenant's
batch again. The figure is the ratio of the two times (1.0: as fast as alone); the big
tenant's batches are still running when the small one ends (checked).

    .venv/bin/python -m bench.tenants --batches 100 --items 1000 --small-items 1000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from batchd.client import AsyncClient
from batchd.core.domain import BatchOptions, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from bench.service import Service, report, running_service, wait_for_handler

SLEEP = b'{"seconds": 0.02}'


async def _commit(store: BatchStore, tenant: str, items: int, chunk_size: int) -> str:
    spec = BatchSpec(
        batch_id=uuid.uuid4().hex,
        handler="sleep",
        options=BatchOptions(chunk_size=chunk_size),
        metadata={},
        tenant=tenant,
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", SLEEP) for n in range(items))
    batch, _ = await session.commit()
    return batch.batch_id


async def _until_done(store: BatchStore, batch_id: str) -> None:
    while not (await store.get_batch(batch_id)).state.is_terminal:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _small(store: BatchStore, items: int, chunk_size: int) -> float:
    started = time.perf_counter()
    batch_id = await _commit(store, "small", items, chunk_size)
    await _until_done(store, batch_id)
    if (await store.get_batch(batch_id)).state != BatchState.COMPLETED:
        raise RuntimeError("the small tenant's batch did not complete")
    return time.perf_counter() - started


async def run(service: Service, args: argparse.Namespace) -> dict[str, float]:
    redis = Redis.from_url(service.redis_url)
    store = BatchStore(redis, Keys())
    try:
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "sleep")
        alone = await _small(store, args.small_items, args.chunk_size)
        big = [
            await _commit(store, "big", args.items, args.chunk_size) for _ in range(args.batches)
        ]
        while (await store.get_batch(big[0])).counts.succeeded == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        beside = await _small(store, args.small_items, args.chunk_size)
        states = [(await store.get_batch(batch_id)).state for batch_id in big]
        unfinished = sum(not state.is_terminal for state in states)
        if not unfinished:
            raise RuntimeError("the big tenant's batches ended first: make them bigger")
        for batch_id in big:
            await store.cancel_batch(batch_id)
    finally:
        await redis.aclose()
    return {
        "big_batches": args.batches,
        "small_alone_seconds": alone,
        "small_beside_big_seconds": beside,
        "ratio_to_alone": beside / alone,
        "big_batches_unfinished_at_the_end": unfinished,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--items", type=int, default=1000, help="items per big batch")
    parser.add_argument("--small-items", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {"BATCHD_WORKER_CONCURRENCY": "500"}
    with running_service(env=env) as service:
        figures = asyncio.run(run(service, args))
    report(figures, args.json)


if __name__ == "__main__":
    main()
