"""The `noop` scenario with 1, 2 and 4 worker processes: items/s end to end for each,
as a ratio to one worker (on a 2-core machine, expect little beyond 2).

Each count gets its own service (private Valkey, server, workers), uploads N `noop`
items and watches them to the terminal snapshot, as `bench.upload_noop` does. Beside
each count's items/s, its Redis commands per item (INFO commandstats delta over that
run: more workers poll and beat more). Redis memory per pending item does not depend on
the workers, so it is measured once, on the first count's service, as
`bench.upload_noop` does: the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over a second upload of N items while the workers
are paused, divided by N (that batch is then cancelled).

    .venv/bin/python -m bench.scaling --items 1000000 --workers 1 2 4 8   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from batchd.client import AsyncClient
from bench.service import redis_commands, report, running_service, wait_for_handler
from bench.upload_noop import pending_bytes
from bench.upload_noop import run as run_upload


async def all_workers_up(target: str, workers: int) -> None:
    async with AsyncClient(target) as client:
        await wait_for_handler(client, "noop", workers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures: dict[str, float] = {"items": args.items}
    pending = 0.0
    for workers in args.workers:
        with running_service(workers=workers) as service:
            asyncio.run(all_workers_up(service.target, workers))
            before = redis_commands(service.redis_url)
            result = asyncio.run(run_upload(args.items, args.chunk_size, service.port))
            commands = redis_commands(service.redis_url) - before
            if workers == args.workers[0]:
                pending = asyncio.run(pending_bytes(service, args.items, args.chunk_size))
        figures[f"workers_{workers}_items_per_second"] = result["items_per_second"]
        figures[f"workers_{workers}_redis_commands_per_item"] = commands / args.items
    first = figures[f"workers_{args.workers[0]}_items_per_second"]
    for workers in args.workers[1:]:
        ratio = figures[f"workers_{workers}_items_per_second"] / first
        figures[f"workers_{workers}_ratio_to_{args.workers[0]}"] = ratio
    figures["redis_bytes_per_pending_item"] = pending
    report(figures, args.json)


if __name__ == "__main__":
    main()
