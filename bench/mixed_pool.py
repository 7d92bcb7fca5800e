"""Routing by handler: a batch of a custom handler on a pool where only some workers
serve it, against the same batch on a worker that serves it alone; and how soon a batch
that no live worker serves starts once one comes.

- `homogeneous`: one worker, serving the custom handler (`bench.upper`, a string made
  upper case) and the built-ins.
- `mixed`: two workers, one as above and one serving only the built-ins.
Each uploads N items (chunks of `--chunk-size`) and watches them to the terminal
snapshot, `--runs` times; the figures are the medians, and the target is mixed within
1.5x of homogeneous (routing: the worker without the handler never takes its chunks).
- `waiting`: a batch of `bench.upper` submitted while only a built-ins worker lives; then a
  worker serving it is started: seconds from the process's start to the batch's start
  time (most of it the worker's own start-up: imports, handlers, the catalog).

    .venv/bin/python -m bench.mixed_pool --items 1000 --chunk-size 10 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchd.client import AsyncClient, BatchState
from batchd.worker import Handler, ItemContext
from bench.service import Service, report, running_service, upload_and_watch, wait_for_handler

NAME = "bench.upper"
ROOT = Path(__file__).resolve().parent.parent
# A worker that serves `bench.upper` (this module, importable from the checkout's root).
SERVING = {"BATCHD_HANDLERS": "bench.mixed_pool:handler", "PYTHONPATH": str(ROOT)}


async def _upper(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    return {"text": str(params.get("text", "")).upper()}


def handler() -> Handler:
    return Handler(
        name=NAME,
        description="Returns its `text` upper case.",
        params_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        run=_upper,
    )


def _items(count: int) -> list[tuple[str, dict[str, object]]]:
    return [(f"i{n}", {"text": f"item {n}"}) for n in range(count)]


async def _runs(service: Service, count: int, chunk_size: int, runs: int) -> float:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, NAME)
        await wait_for_handler(client, "noop", len(service.worker_pids))
        took = []
        for _ in range(runs):
            seconds, _ = await upload_and_watch(
                client, NAME, _items(count), count, {"chunk_size": chunk_size}
            )
            took.append(seconds)
    return statistics.median(took)


async def _waiting(service: Service, count: int, chunk_size: int) -> tuple[float, float]:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, NAME)  # the serving worker published the schema...
        os.kill(service.worker_pids[0], 15)  # ...and goes
        while any(h.name == NAME and h.live_workers for h in await client.handlers()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        result = await client.upload(NAME, _items(count), options={"chunk_size": chunk_size})
        batch_id = result.batch.batch_id
        batch = await client.get(batch_id)
        if batch.state != BatchState.QUEUED or not batch.waiting_reason:
            raise RuntimeError(f"the batch should wait, saying why: {batch}")
        env = {**os.environ, **SERVING, "BATCHD_REDIS_URL": service.redis_url}
        env["BATCHD_LOG_LEVEL"] = "warning"
        spawned = time.time()
        worker = await asyncio.create_subprocess_exec(
            Path(sys.executable).parent / "batchd-worker", env=env
        )
        try:
            await wait_for_handler(client, NAME)
            live = time.time()
            async for progress in client.watch(batch_id, min_interval=0.05):
                if progress.state.is_terminal:
                    break
            started = (await client.get(batch_id)).start_time
        finally:
            worker.terminate()
            await worker.wait()
    if started is None or progress.state != BatchState.COMPLETED:
        raise RuntimeError(f"the batch did not complete: {progress}")
    return started.timestamp() - spawned, live - spawned


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures: dict[str, float] = {"items": args.items, "chunk_size": args.chunk_size}
    with running_service(workers=1, worker_envs=[SERVING]) as service:
        homogeneous = asyncio.run(_runs(service, args.items, args.chunk_size, args.runs))
    with running_service(workers=2, worker_envs=[SERVING, {}]) as service:
        mixed = asyncio.run(_runs(service, args.items, args.chunk_size, args.runs))
    with running_service(workers=2, worker_envs=[SERVING, {}]) as service:
        start_delay, live_delay = asyncio.run(_waiting(service, args.items, args.chunk_size))
    figures["homogeneous_seconds"] = homogeneous
    figures["mixed_seconds"] = mixed
    figures["mixed_ratio_to_homogeneous"] = mixed / homogeneous
    # From the serving worker's process start: to its catalog seen live by a client
    # (polled), and to the waiting batch's start (it polls its queues once published).
    figures["worker_seen_live_after_spawn_seconds"] = live_delay
    figures["waiting_batch_start_after_spawn_seconds"] = start_delay
    report(figures, args.json)


if __name__ == "__main__":
    main()
