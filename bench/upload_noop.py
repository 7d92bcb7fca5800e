"""UploadBatch of N `noop` items to the terminal WatchProgress snapshot, end to end.

Starts a private Valkey (AOF on, as the embedded default), `batchd-server` and
`batchd-worker` as subprocesses, streams the items through the Python client, watches to
the terminal snapshot and reports the wall time, items/s (also at steady state: from the
end of the upload to 90% done), the server's and the worker's peak RSS, and Redis:
commands per item (INFO commandstats delta over the run, the client's watch and the
worker's heartbeats included; and at steady state) and memory per pending item (the
growth of Redis's stored bytes, `bench.service.redis_stored_bytes`, over a second upload
of N items while the worker is paused, divided by N; that batch is then cancelled).

    .venv/bin/python -m bench.upload_noop --items 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from batchd.client import AsyncClient, BatchState
from bench.service import (
    Service,
    peak_rss_mib,
    redis_bytes_per_pending_item,
    redis_commands,
    report,
    running_service,
    wait_for_handler,
)


def items(count: int) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {}


async def run(
    count: int,
    chunk_size: int,
    server_port: int,
    redis_url: str | None = None,
    *,
    block_size: int = 0,
) -> dict[str, float]:
    """With `redis_url`, also the steady state: items/s and Redis commands per item from the
    end of the upload until 90% of the items are done (no upload, no start or tail).
    `block_size`: the batch's (0: noop's default, one item per call)."""
    steady: list[tuple[float, int, int]] = []  # (time, succeeded, commands)
    async with AsyncClient(f"127.0.0.1:{server_port}") as client:
        # The worker publishes its catalog at start-up, in another process: poll for it.
        await wait_for_handler(client, "noop")
        started = time.perf_counter()
        options = {"chunk_size": chunk_size, "block_size": block_size}
        result = await client.upload("noop", items(count), options=options)
        uploaded = time.perf_counter()
        async for progress in client.watch(result.batch.batch_id, min_interval=0.1):
            last = progress
            if redis_url is not None and len(steady) < 2:
                done = progress.counts.succeeded
                if not steady or done >= 0.9 * count:
                    steady.append((time.perf_counter(), done, redis_commands(redis_url)))
        finished = time.perf_counter()
    if last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    figures = {
        "items": count,
        "upload_seconds": uploaded - started,
        "total_seconds": finished - started,
        "items_per_second": count / (finished - started),
    }
    if len(steady) == 2 and steady[1][1] > steady[0][1]:
        (t0, done0, commands0), (t1, done1, commands1) = steady
        figures["steady_items_per_second"] = (done1 - done0) / (t1 - t0)
        figures["steady_redis_commands_per_item"] = (commands1 - commands0) / (done1 - done0)
    return figures


async def pending_bytes(service: Service, count: int, chunk_size: int) -> float:
    """Redis memory per pending `noop` item (`redis_bytes_per_pending_item`)."""
    async with AsyncClient(service.target) as client:
        options = {"chunk_size": chunk_size}
        return await redis_bytes_per_pending_item(
            client, service, "noop", items(count), count, options
        )


async def measure(service: Service, count: int, chunk_size: int) -> dict[str, float]:
    """`run`, with Redis commands per item over it and memory per pending item."""
    before = redis_commands(service.redis_url)
    figures = await run(count, chunk_size, service.port, service.redis_url)
    figures["redis_commands_per_item"] = (redis_commands(service.redis_url) - before) / count
    figures["redis_bytes_per_pending_item"] = await pending_bytes(service, count, chunk_size)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service() as service:
        figures = asyncio.run(measure(service, args.items, args.chunk_size))
        figures["server_peak_rss_mib"] = peak_rss_mib(service.server_pid)
        figures["worker_peak_rss_mib"] = peak_rss_mib(service.worker_pid)
    report(figures, args.json)


if __name__ == "__main__":
    main()
