"""`noop` items end to end, beside the Python ceiling and plain ARQ, measured in one run.

Figures:
- batchd: UploadBatch of N `noop` items to the terminal WatchProgress snapshot (items/s),
  Redis commands per item (INFO commandstats delta over that run, the client's watch
  and the worker's heartbeats included; and at steady state, from the end of the upload
  to 90% done, with that window's items/s) and Redis memory per pending item (the
  growth of Redis's stored bytes, `bench.service.redis_stored_bytes`, over a second
  upload of N items while the worker is paused, divided by N; that batch is then
  cancelled): `bench.upload_noop.measure`;
- ceiling: an in-process loop decoding the same msgpack chunk bytes batchd stores
  (`encode_chunk`/`decode_chunk`), parsing each item's params JSON and awaiting the same
  `noop` handler function with the same item context, as the worker does per item (the
  same JSON parser, the logger bound only if used), without Redis or gRPC;
- arq: plain ARQ on its own private Valkey (AOF on, as batchd's), one job per item:
  enqueue `--arq-jobs` jobs (1,000 at a time), then one burst worker at the same
  concurrency as batchd's worker (100) runs them; jobs/s over both phases, and each
  phase's own rate (ARQ's default poll_delay of 0.5 s is kept: it bounds the run phase).

    .venv/bin/python -m bench.noop --items 1000000 --arq-jobs 20000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

from batchd.core import fastjson
from batchd.core.codec import decode_chunk, encode_chunk
from batchd.core.domain import NewItem
from batchd.core.embedded_redis import EmbeddedRedis
from batchd.worker.handler import ItemContext
from batchd.worker.handlers import noop_handler
from bench.service import report, running_service
from bench.upload_noop import items, measure

ARQ_CONCURRENCY = 100  # batchd's default BATCHD_WORKER_CONCURRENCY


def stored_chunks(count: int, chunk_size: int) -> list[bytes]:
    new = [NewItem(custom_id, json.dumps(params).encode()) for custom_id, params in items(count)]
    return [encode_chunk(new[i : i + chunk_size]) for i in range(0, count, chunk_size)]


async def ceiling(chunks: Sequence[bytes]) -> float:
    """Items/s of the bare loop: decode, parse params, call the handler."""
    handler = noop_handler()
    log = structlog.get_logger("bench")
    done = 0
    started = time.perf_counter()
    for raw in chunks:
        for custom_id, params_json in decode_chunk(raw):
            params = fastjson.loads(params_json)
            ctx = ItemContext("ceiling", custom_id, 1, log)
            await handler.run(params, ctx)
            done += 1
    return done / (time.perf_counter() - started)


async def arq_noop(ctx: dict[str, Any], index: int) -> None:
    return None


async def arq_figures(jobs: int) -> dict[str, float]:
    """Jobs/s of plain ARQ (default settings but max_jobs): overall, enqueueing, running."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        settings = RedisSettings.from_dsn(redis.url)
        pool = await create_pool(settings)
        worker = Worker(
            functions=[func(arq_noop, name="arq_noop")],
            redis_settings=settings,
            burst=True,
            max_jobs=ARQ_CONCURRENCY,
            handle_signals=False,
        )
        try:
            started = time.perf_counter()
            for first in range(0, jobs, 1000):
                batch = range(first, min(first + 1000, jobs))
                await asyncio.gather(*(pool.enqueue_job("arq_noop", i) for i in batch))
            enqueued = time.perf_counter()
            await worker.main()
            finished = time.perf_counter()
            if worker.jobs_complete != jobs:
                raise RuntimeError(f"ARQ ran {worker.jobs_complete} of {jobs} jobs")
        finally:
            await worker.close()
            await pool.aclose()
    return {
        "arq_jobs": jobs,
        "arq_jobs_per_second": jobs / (finished - started),
        "arq_enqueue_jobs_per_second": jobs / (enqueued - started),
        "arq_run_jobs_per_second": jobs / (finished - enqueued),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--arq-jobs", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service() as service:
        figures = asyncio.run(measure(service, args.items, args.chunk_size))
    chunks = stored_chunks(args.items, args.chunk_size)
    figures["ceiling_items_per_second"] = asyncio.run(ceiling(chunks))
    figures.update(asyncio.run(arq_figures(args.arq_jobs)))
    rate = figures["items_per_second"]
    figures["ratio_to_ceiling"] = rate / figures["ceiling_items_per_second"]
    figures["ratio_to_arq"] = rate / figures["arq_jobs_per_second"]
    report(figures, args.json)


if __name__ == "__main__":
    main()
