"""`noop` items end to end in blocks against one item per call, measured in one run.

The same upload-and-run of N `noop` items (`bench.upload_noop.run`: UploadBatch to the
terminal WatchProgress snapshot) on one service, in alternating pairs: one batch with
`block_size` 1 (noop's default: one `run` call per item) and one with `--block-size`
(one `run_many` call per block). Reports each run's items/s, the worker's CPU time per
item (/proc, user + system: it moves far less with the neighbours than the rate does),
and the ratios blocks/single of the medians.

    .venv/bin/python -m bench.noop_blocks --items 200000 --pairs 3   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.service import Service, cpu_seconds, report, running_service
from bench.upload_noop import run


async def _measure(
    service: Service, items: int, chunk_size: int, block_size: int
) -> tuple[float, float]:
    """(items/s, worker CPU microseconds per item) of one batch."""
    cpu = sum(cpu_seconds(pid) for pid in service.worker_pids)
    figures = await run(items, chunk_size, service.port, block_size=block_size)
    cpu = sum(cpu_seconds(pid) for pid in service.worker_pids) - cpu
    return figures["items_per_second"], cpu / items * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--block-size", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=3, help="single/blocks runs, alternating")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    runs: dict[int, list[tuple[float, float]]] = {1: [], args.block_size: []}
    with running_service() as service:
        for _ in range(args.pairs):
            for block_size in runs:
                measured = asyncio.run(_measure(service, args.items, args.chunk_size, block_size))
                runs[block_size].append(measured)
    single, blocks = runs[1], runs[args.block_size]
    figures: dict[str, float] = {
        "items": args.items,
        "block_size": args.block_size,
        "single_items_per_second": statistics.median(rate for rate, _ in single),
        "blocks_items_per_second": statistics.median(rate for rate, _ in blocks),
        "single_worker_cpu_us_per_item": statistics.median(cpu for _, cpu in single),
        "blocks_worker_cpu_us_per_item": statistics.median(cpu for _, cpu in blocks),
    }
    figures["ratio_blocks_to_single"] = (
        figures["blocks_items_per_second"] / figures["single_items_per_second"]
    )
    # CPU time counts in clock ticks: a small run's may read 0.
    single_cpu = figures["single_worker_cpu_us_per_item"]
    figures["cpu_ratio_blocks_to_single"] = (
        figures["blocks_worker_cpu_us_per_item"] / single_cpu if single_cpu else float("nan")
    )
    report(figures, args.json)


if __name__ == "__main__":
    main()
