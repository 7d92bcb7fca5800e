"""K concurrent WatchProgress streams on one running batch: the server's CPU time and how
late the last watcher hears that the batch ended, beside a single watcher on the same run.

Each round uploads N `noop` items while the worker is paused, opens its watchers (spread
over several client channels) and waits for each one's first snapshot, then resumes the
worker and waits for every terminal snapshot. The server's CPU time (utime + stime from
/proc/<pid>/stat) is counted from the resume to the last terminal snapshot; the delay is
from the batch's end_time to the last watcher's terminal snapshot. The baseline round
has one watcher.

    .venv/bin/python -m bench.watchers --watchers 5000 --channels 50 --items 200000   # full
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from batchd.client import AsyncClient, BatchState
from bench.service import (
    Service,
    cpu_seconds,
    paused,
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


async def round_(
    service: Service, clients: Sequence[AsyncClient], watchers: int, count: int
) -> tuple[float, float]:
    """One round: (server CPU seconds, end-to-last-watcher delay in seconds)."""
    client = clients[0]
    with paused(service.worker_pids):
        batch = await client.upload("noop", items(count), options={"chunk_size": 1000})
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
    ended = (await client.get(batch_id)).end_time
    if ended is None:
        raise RuntimeError("a completed batch without end_time")
    return cpu, last - ended.timestamp()


async def run(service: Service, args: argparse.Namespace) -> dict[str, float]:
    clients = [AsyncClient(service.target) for _ in range(args.channels)]
    try:
        await wait_for_handler(clients[0], "noop")
        one_cpu, one_delay = await round_(service, clients, 1, args.items)
        cpu, delay = await round_(service, clients, args.watchers, args.items)
    finally:
        for client in clients:
            await client.close()
    return {
        "watchers": args.watchers,
        "channels": args.channels,
        "items": args.items,
        "server_cpu_seconds": cpu,
        "server_cpu_seconds_one_watcher": one_cpu,
        "cpu_ratio_to_one_watcher": cpu / max(one_cpu, 0.01),
        "last_watcher_delay_seconds": delay,
        "one_watcher_delay_seconds": one_delay,
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
