"""UploadBatch of N `noop` items to the terminal WatchProgress snapshot, end to end.

Starts a private Valkey (AOF on, as the embedded default), `batchd-server` and
`batchd-worker` as subprocesses, streams the items through the Python client, watches to
the terminal snapshot and reports the wall time, items/s and the server's peak RSS.

    .venv/bin/python -m bench.upload_noop --items 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from batchd.client import AsyncClient, BatchState
from bench.service import peak_rss_mib, redis_commands, report, running_service, wait_for_handler


def items(count: int) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {}


async def run(
    count: int, chunk_size: int, server_port: int, redis_url: str | None = None
) -> dict[str, float]:
    """With `redis_url`, also the steady state: items/s and Redis commands per item from the
    end of the upload until 90% of the items are done (no upload, no start or tail)."""
    steady: list[tuple[float, int, int]] = []  # (time, succeeded, commands)
    async with AsyncClient(f"127.0.0.1:{server_port}") as client:
        # The worker publishes its catalog at start-up, in another process: poll for it.
        await wait_for_handler(client, "noop")
        started = time.perf_counter()
        result = await client.upload("noop", items(count), options={"chunk_size": chunk_size})
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service() as service:
        figures = asyncio.run(run(args.items, args.chunk_size, service.port))
        figures["server_peak_rss_mib"] = peak_rss_mib(service.server_pid)
        figures["worker_peak_rss_mib"] = peak_rss_mib(service.worker_pid)
    report(figures, args.json)


if __name__ == "__main__":
    main()
