"""The cost of Prometheus metrics on the `noop` path: the same upload-and-run of N `noop`
items (`bench.upload_noop.run`) against a fresh service with the server's and the
worker's /metrics listeners on (each scraped every second while the batch runs, far
more often than Prometheus's usual 15 s) and with both off, in alternating pairs, in
one run. Reports each run's items/s and the server's and worker's CPU time per item
(/proc, user + system: on a shared machine it moves far less with the neighbours than
the rate does), and the ratios on/off of the medians.

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
from bench.service import cpu_seconds, report, running_service
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


async def _measure(items: int, chunk_size: int, metrics: bool) -> tuple[float, float]:
    """(items/s, server + worker CPU microseconds per item) of one run."""
    ports = [free_port(), free_port()] if metrics else [0, 0]
    env = {"BATCHD_METRICS_PORT": str(ports[0]), "BATCHD_WORKER_METRICS_PORT": str(ports[1])}
    with running_service(env=env) as service:
        pids = (service.server_pid, *service.worker_pids)
        stop = asyncio.Event()
        scraper = asyncio.create_task(_scraping(ports if metrics else [], stop))
        cpu = sum(cpu_seconds(pid) for pid in pids)
        try:
            figures = await run(items, chunk_size, service.port, service.redis_url)
        finally:
            stop.set()
            await scraper
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    return figures["items_per_second"], cpu / items * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2, help="on/off pairs, alternating")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for pair in range(args.pairs):
        # Alternate which goes first, so that a drift of the machine's speed splits evenly.
        order = (True, False) if pair % 2 == 0 else (False, True)
        for metrics in order:
            runs[metrics].append(asyncio.run(_measure(args.items, args.chunk_size, metrics)))
    figures: dict[str, float] = {"items": args.items, "pairs": args.pairs}
    for n, ((on_rate, on_cpu), (off_rate, off_cpu)) in enumerate(
        zip(runs[True], runs[False], strict=True)
    ):
        figures[f"on_{n}_items_per_second"] = on_rate
        figures[f"off_{n}_items_per_second"] = off_rate
        figures[f"on_{n}_cpu_us_per_item"] = on_cpu
        figures[f"off_{n}_cpu_us_per_item"] = off_cpu
    rate = {m: statistics.median(r for r, _ in runs[m]) for m in runs}
    cpu = {m: statistics.median(c for _, c in runs[m]) for m in runs}
    figures["on_median_items_per_second"] = rate[True]
    figures["off_median_items_per_second"] = rate[False]
    figures["ratio_on_to_off"] = rate[True] / rate[False]
    figures["on_median_cpu_us_per_item"] = cpu[True]
    figures["off_median_cpu_us_per_item"] = cpu[False]
    # Above 1: metrics on cost that much more CPU per item.
    figures["cpu_ratio_on_to_off"] = cpu[True] / cpu[False]
    report(figures, args.json)


if __name__ == "__main__":
    main()
