"""UploadBatch of N `noop` items to the terminal WatchProgress snapshot, end to end.

Starts a private Valkey (AOF on, as the embedded default), `batchd-server` and
`batchd-worker` as subprocesses, streams the items through the Python client, watches to
the terminal snapshot and reports the wall time, items/s and the server's peak RSS.

    .venv/bin/python -m bench.upload_noop --items 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from batchd.client import AsyncClient, BatchState
from batchd.core.embedded_redis import EmbeddedRedis, free_port


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def items(count: int) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {}


async def run(count: int, chunk_size: int, server_port: int) -> dict[str, float]:
    async with AsyncClient(f"127.0.0.1:{server_port}") as client:
        # The worker publishes its catalog at start-up, in another process: poll for it.
        while not await _has_noop(client):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
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


async def _has_noop(client: AsyncClient) -> bool:
    try:
        return any(h.name == "noop" and h.live_workers for h in await client.handlers())
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        port = free_port()
        env = dict(os.environ, BATCHD_REDIS_URL=redis.url, BATCHD_PORT=str(port),
                   BATCHD_HOST="127.0.0.1", BATCHD_LOG_LEVEL="warning")  # fmt: skip
        bin_dir = Path(sys.executable).parent
        server = subprocess.Popen([bin_dir / "batchd-server"], env=env)
        worker = subprocess.Popen([bin_dir / "batchd-worker"], env=env)
        try:
            figures = asyncio.run(run(args.items, args.chunk_size, port))
            figures["server_peak_rss_mib"] = peak_rss_mib(server.pid)
            figures["worker_peak_rss_mib"] = peak_rss_mib(worker.pid)
        finally:
            for process in (server, worker):
                process.terminate()
                process.wait(30)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
