"""K concurrent WatchProgress streams on one running batch: the server's CPU time and how
late the last watcher hears that the batch ended, beside a single watcher on the same run.

Each round uploads N `noop` items while the worker is paused, opens its watchers (spread
over several client channels) and waits for each one's first snapshot, then resumes the
worker and waits for every terminal snapshot. The server's CPU time (utime + stime from
/proc/<pid>/stat) is counted from the resume to the last terminal snapshot; the delay is
from the batch's end_time to the last watcher's terminal snapshot. The baseline round
has one watcher. Redis: commands per item in each round (INFO commandstats delta from
the upload to the last terminal snapshot: the upload, the worker and every watcher's
reads) and memory per pending item (the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over the K-watcher round's upload, which the paused
worker does not take, divided by N).

    .venv/bin/python -m bench.watchers --watchers 5000 --channels 50 --items 200000   # full
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batchd.client import AsyncClient, BatchState
from bench.service import (
    Service,
    cpu_seconds,
    paused,
    redis_commands,
    redis_memory_growth,
    report,
    running_service,
    wait_for_handler,
)
from bench.upload_noop import items


async def watch_one(client: AsyncClient, batch_id: str, ready: asyncio.Queue[None]) -> float:
    """Watches to the terminal snapshot: when it came (time.time())."""
    first = True
    async for progress in client.watch(batch_id):
        if first:
            ready.put_nowait(None)
            first = False
        if progress.state.is_terminal:
            if progress.state != BatchState.COMPLETED:
                raise RuntimeError(f"the batch did not complete: {progress}")
            return time.time()
    raise RuntimeError("the watch ended without a terminal snapshot")


@dataclass(frozen=True)
class Round:
    """One round's figures."""

    server_cpu_seconds: float  # from the resume to the last terminal snapshot
    delay_seconds: float  # from the batch's end_time to the last terminal snapshot
    redis_commands_per_item: float
    redis_bytes_per_pending_item: float


async def round_(
    service: Service, clients: Sequence[AsyncClient], watchers: int, count: int
) -> Round:
    client, url = clients[0], service.redis_url
    before = redis_commands(url)
    with paused(service.worker_pids):
        upload = client.upload("noop", items(count), options={"chunk_size": 1000})
        batch, grown = await redis_memory_growth(url, upload)
        batch_id = batch.batch.batch_id
        ready: asyncio.Queue[None] = asyncio.Queue()
        tasks = [
            asyncio.create_task(watch_one(clients[i % len(clients)], batch_id, ready))
            for i in range(watchers)
        ]
        for _ in range(watchers):
            await ready.get()
        cpu = cpu_seconds(service.server_pid)
    last = max(await asyncio.gather(*tasks))
    cpu = cpu_seconds(service.server_pid) - cpu
    commands = redis_commands(url) - before
    ended = (await client.get(batch_id)).end_time
    if ended is None:
        raise RuntimeError("a completed batch without end_time")
    return Round(cpu, last - ended.timestamp(), commands / count, grown / count)


async def run(service: Service, args: argparse.Namespace) -> dict[str, float]:
    clients = [AsyncClient(service.target) for _ in range(args.channels)]
    try:
        await wait_for_handler(clients[0], "noop")
        one = await round_(service, clients, 1, args.items)
        many = await round_(service, clients, args.watchers, args.items)
    finally:
        for client in clients:
            await client.close()
    return {
        "watchers": args.watchers,
        "channels": args.channels,
        "items": args.items,
        "server_cpu_seconds": many.server_cpu_seconds,
        "server_cpu_seconds_one_watcher": one.server_cpu_seconds,
        "cpu_ratio_to_one_watcher": many.server_cpu_seconds / max(one.server_cpu_seconds, 0.01),
        "last_watcher_delay_seconds": many.delay_seconds,
        "one_watcher_delay_seconds": one.delay_seconds,
        "redis_commands_per_item": many.redis_commands_per_item,
        "redis_commands_per_item_one_watcher": one.redis_commands_per_item,
        "redis_bytes_per_pending_item": many.redis_bytes_per_pending_item,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service(env={"BATCHD_WORKER_TTL": "3600"}) as service:
        figures = asyncio.run(run(service, args))
    report(figures, args.json)


if __name__ == "__main__":
    main()
