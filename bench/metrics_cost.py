"""The cost of Prometheus metrics on the `noop` path: the same upload-and-run of N `noop`
items (`bench.upload_noop.run`) against a fresh service with the server's and the
worker's /metrics listeners on (each scraped every second while the batch runs, far
more often than Prometheus's usual 15 s) and with both off, in alternating pairs, in
one run. Reports each run's items/s and the ratio on/off of the medians.

    .venv/bin/python -m bench.metrics_cost --items 200000 --pairs 3   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from batchd.core.embedded_redis import free_port
from bench.service import report, running_service
from bench.upload_noop import run


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body


async def _scraping(ports: Sequence[int], stop: asyncio.Event) -> int:
    """Scrapes every port once a second until `stop`; returns the scrapes made."""
    done = 0
    while not stop.is_set():
        for port in ports:
            try:
                await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
            except OSError:  # not listening yet: the processes are starting
                continue
            done += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return done


async def _measure(items: int, chunk_size: int, metrics: bool) -> float:
    ports = [free_port(), free_port()] if metrics else [0, 0]
    env = {"BATCHD_METRICS_PORT": str(ports[0]), "BATCHD_WORKER_METRICS_PORT": str(ports[1])}
    with running_service(env=env) as service:
        stop = asyncio.Event()
        scraper = asyncio.create_task(_scraping(ports if metrics else [], stop))
        try:
            figures = await run(items, chunk_size, service.port, service.redis_url)
        finally:
            stop.set()
            await scraper
    return figures["items_per_second"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2, help="on/off pairs, alternating")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    on: list[float] = []
    off: list[float] = []
    for pair in range(args.pairs):
        # Alternate which goes first, so that a drift of the machine's speed splits evenly.
        order = (True, False) if pair % 2 == 0 else (False, True)
        for metrics in order:
            rate = asyncio.run(_measure(args.items, args.chunk_size, metrics))
            (on if metrics else off).append(rate)
    figures: dict[str, float] = {"items": args.items, "pairs": args.pairs}
    for n, (a, b) in enumerate(zip(on, off, strict=True)):
        figures[f"on_{n}_items_per_second"] = a
        figures[f"off_{n}_items_per_second"] = b
    figures["on_median_items_per_second"] = statistics.median(on)
    figures["off_median_items_per_second"] = statistics.median(off)
    figures["ratio_on_to_off"] = statistics.median(on) / statistics.median(off)
    report(figures, args.json)


if __name__ == "__main__":
    main()
