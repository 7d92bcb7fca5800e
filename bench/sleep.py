"""`sleep` items of 10 ms at a worker concurrency of 500, against the ideal rate.

One worker process with BATCHD_WORKER_CONCURRENCY=500 runs N items of `sleep`
(`{"seconds": 0.01}`), uploaded and watched to the terminal snapshot. The ideal is
concurrency ÷ latency (500 ÷ 0.01 s = 50,000 items/s): a worker that kept every slot busy
with no overhead of its own.

    .venv/bin/python -m bench.sleep --items 500000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

from batchd.client import AsyncClient
from bench.service import report, running_service, upload_and_watch, wait_for_handler


def items(count: int, seconds: float) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {"seconds": seconds}


async def run(count: int, seconds: float, port: int) -> float:
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        await wait_for_handler(client, "sleep")
        return count / await upload_and_watch(client, "sleep", items(count, seconds), count)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=0.01, help="each item's sleep")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {"BATCHD_WORKER_CONCURRENCY": str(args.concurrency)}
    with running_service(env=env) as service:
        rate = asyncio.run(run(args.items, args.seconds, service.port))
    ideal = args.concurrency / args.seconds
    report(
        {
            "items": args.items,
            "concurrency": args.concurrency,
            "items_per_second": rate,
            "ideal_items_per_second": ideal,
            "ratio_to_ideal": rate / ideal,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
