"""`sleep` items of 10 ms at a worker concurrency of 500, against the ideal rate.

W worker processes (one unless `--workers`) with BATCHD_WORKER_CONCURRENCY=C (500) run N
items of `sleep` (`{"seconds": 0.01}`), uploaded and watched to the terminal snapshot.
The ideal is W * C ÷ latency (500 ÷ 0.01 s = 50,000 items/s): workers that kept every
slot busy with no overhead of their own. Beside it, measured in the same run: a bare
asyncio loop (no Redis, no gRPC) with as many coroutines (W * C) each awaiting the same
`sleep` handler for N items: what one Python process's event loop manages on this
machine. Beside batchd's items/s, Redis commands per item (INFO commandstats delta from
the upload to the terminal snapshot) and memory per pending item (the growth of Redis's
stored bytes, `bench.service.redis_stored_bytes`, over a second upload of the same items
while the worker is paused, divided by N; that batch is then cancelled).

    .venv/bin/python -m bench.sleep --items 500000   # a full run
    .venv/bin/python -m bench.sleep --items 20000 --workers 2 --concurrency 100  # two workers
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from batchd.client import AsyncClient
from batchd.core.logs import get_logger
from batchd.worker.handler import ItemContext
from batchd.worker.handlers import sleep_handler
from bench.service import (
    Measured,
    Service,
    report,
    running_service,
    upload_and_measure,
    wait_for_handler,
)


def items(count: int, seconds: float) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {"seconds": seconds}


async def run(
    count: int, seconds: float, service: Service, chunk_size: int, workers: int = 1
) -> Measured:
    options = {"chunk_size": chunk_size} if chunk_size else {}
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "sleep", workers)
        return await upload_and_measure(
            client, service, "sleep", lambda: items(count, seconds), count, options
        )


async def bare_loop(count: int, seconds: float, concurrency: int) -> float:
    """Items/s of `concurrency` coroutines awaiting the `sleep` handler, in process."""
    run_sleep = sleep_handler().run
    ctx = ItemContext(batch_id="bench", custom_id="item", attempt=1, logger=get_logger("bench"))
    left = iter(range(count))

    async def consume() -> None:
        for _ in left:
            await run_sleep({"seconds": seconds}, ctx)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(consume())
    return count / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=0.01, help="each item's sleep")
    parser.add_argument("--concurrency", type=int, default=500, help="slots per worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="the batch's chunk_size (0: the default)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {"BATCHD_WORKER_CONCURRENCY": str(args.concurrency)}
    with running_service(workers=args.workers, env=env) as service:
        measured = asyncio.run(
            run(args.items, args.seconds, service, args.chunk_size, args.workers)
        )
    rate = measured.items_per_second
    slots = args.workers * args.concurrency
    bare = asyncio.run(bare_loop(args.items, args.seconds, slots))
    ideal = slots / args.seconds
    report(
        {
            "items": args.items,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "items_per_second": rate,
            "ideal_items_per_second": ideal,
            "ratio_to_ideal": rate / ideal,
            # From the upload's answer on: the run alone, without the upload before it.
            "run_items_per_second": measured.run_items_per_second,
            "run_ratio_to_ideal": measured.run_items_per_second / ideal,
            "bare_loop_items_per_second": bare,
            "bare_loop_ratio_to_ideal": bare / ideal,
            "ratio_to_bare_loop": rate / bare,
            **measured.redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
