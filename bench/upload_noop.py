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
from bench.service import peak_rss_mib, report, running_service, wait_for_handler


def items(count: int) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {}


async def run(count: int, chunk_size: int, server_port: int) -> dict[str, float]:
    async with AsyncClient(f"127.0.0.1:{server_port}") as client:
        # The worker publishes its catalog at start-up, in another process: poll for it.
        await wait_for_handler(client, "noop")
        started = time.perf_counter()
        result = await client.upload("noop", items(count), options={"chunk_size": chunk_size})
        uploaded = time.perf_counter()
        async for progress in client.watch(result.batch.batch_id, min_interval=0.1):
            last = progress
        finished = time.perf_counter()
    if last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    return {
        "items": count,
        "upload_seconds": uploaded - started,
        "total_seconds": finished - started,
        "items_per_second": count / (finished - started),
    }


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
