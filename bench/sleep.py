"""`sleep` items of 10 ms at a worker concurrency of 500, against the ideal rate.

W worker processes (one unless `--workers`) with BATCHD_WORKER_CONCURRENCY=C (500) run N
items of `sleep` (`{"seconds": 0.01}`), uploaded and watched to the terminal snapshot.
The ideal is W * C ÷ latency (500 ÷ 0.01 s = 50,000 items/s): workers that kept every
slot busy with no overhead of their own. Beside it, measured in the same run and
alternating with batchd's runs (`--runs`, each figure the median of the runs): bare
asyncio loops (no Redis, no gRPC) of C coroutines each awaiting the same `sleep` handler,
W processes sharing the N items, as the workers do (`bare_loop`), the same on uvloop,
the workers' event loop (`bare_uvloop`), and the asyncio coroutines in one process
(`bare_loop_one_process`): what the machine's event loops manage without batchd. Beside
the rates, CPU per item of the workers (together), the batchd server and Valkey, and of
the bare loops' processes: the figures that hold when other work on the machine swings
the rates. And Redis commands per item (INFO commandstats delta from the upload to the
terminal snapshot) and memory per pending item (the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over a second upload of the same items while the
worker is paused, divided by N; that batch is then cancelled), both of the first run.

    .venv/bin/python -m bench.sleep --items 500000   # a full run
    .venv/bin/python -m bench.sleep --items 20000 --workers 2 --concurrency 100 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from batchd.client import AsyncClient
from batchd.core.logs import get_logger
from batchd.worker.handler import ItemContext
from batchd.worker.handlers import sleep_handler
from bench.service import (
    Measured,
    Service,
    cpu_seconds,
    redis_cpu_seconds,
    report,
    run_forked,
    running_service,
    shares,
    upload_and_measure,
    upload_and_watch,
    wait_for_handler,
)


def items(count: int, seconds: float) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {"seconds": seconds}


async def run(
    count: int,
    seconds: float,
    service: Service,
    chunk_size: int,
    workers: int = 1,
    start_early: bool = False,
    watched: Callable[[], object] | None = None,
) -> Measured:
    """The batch with the Redis figures; `watched` as `upload_and_measure`'s."""
    options = {"chunk_size": chunk_size} if chunk_size else {}
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "sleep", workers)
        return await upload_and_measure(
            client,
            service,
            "sleep",
            lambda: items(count, seconds),
            count,
            options,
            start_early,
            watched,
        )


async def run_again(
    count: int, seconds: float, service: Service, chunk_size: int, start_early: bool = False
) -> Measured:
    """Another batch through the same service, timed as `run`, without the Redis figures."""
    options = {"chunk_size": chunk_size} if chunk_size else {}
    async with AsyncClient(service.target) as client:
        took, run_took = await upload_and_watch(
            client, "sleep", items(count, seconds), count, options, start_early
        )
    return Measured(took, count / took, 0.0, 0.0, count / run_took)


async def bare_loop(count: int, seconds: float, concurrency: int) -> float:
    """Items/s of `concurrency` coroutines awaiting the `sleep` handler, in process."""
    started = time.perf_counter()
    await _consume_all(count, seconds, concurrency)
    return count / (time.perf_counter() - started)


async def _consume_all(count: int, seconds: float, concurrency: int) -> None:
    run_sleep = sleep_handler().run
    ctx = ItemContext(batch_id="bench", custom_id="item", attempt=1, logger=get_logger("bench"))
    left = iter(range(count))

    async def consume() -> None:
        for _ in left:
            await run_sleep({"seconds": seconds}, ctx)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(consume())


def bare_loops(
    count: int, seconds: float, concurrency: int, processes: int, loop: str = "asyncio"
) -> tuple[float, float]:
    """Items/s of `processes` forked processes sharing `count` items, each with
    `concurrency` coroutines, on the event loop `loop` names (`run_forked`), from their
    common start to the last one's end; and their CPU seconds per item."""
    works = [
        functools.partial(_consume_all, share, seconds, concurrency)
        for share in shares(count, processes)
    ]
    forked = run_forked(works, loop)
    return count / forked.seconds, forked.cpu_seconds / count


def _append_cpu(into: list[tuple[float, float, float]], service: Service) -> None:
    into.append(service_cpu(service))


def service_cpu(service: Service) -> tuple[float, float, float]:
    """CPU seconds so far of the service's workers (together), server and Valkey."""
    workers = sum(cpu_seconds(pid) for pid in service.worker_pids)
    return workers, cpu_seconds(service.server_pid), redis_cpu_seconds(service.redis_url)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=0.01, help="each item's sleep")
    parser.add_argument("--concurrency", type=int, default=500, help="slots per worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="the batch's chunk_size (0: the default)"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="batchd runs, each after a run of the bare loops"
    )
    parser.add_argument(
        "--start-early",
        action="store_true",
        help="upload with start_early: items start as their messages arrive",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {"BATCHD_WORKER_CONCURRENCY": str(args.concurrency)}
    slots = args.workers * args.concurrency
    ideal = slots / args.seconds
    runs: list[Measured] = []
    cpu: list[tuple[float, float, float]] = []
    bare: list[float] = []
    bare_cpu: list[float] = []
    bare_one: list[float] = []
    bare_uvloop: list[tuple[float, float]] = []
    with running_service(workers=args.workers, env=env) as service:
        for n in range(max(args.runs, 1)):
            # The service idles (its workers poll) while the bare loops run, as the bare
            # loops do not run while batchd does.
            rate, per_item = bare_loops(args.items, args.seconds, args.concurrency, args.workers)
            bare.append(rate)
            bare_cpu.append(per_item)
            bare_one.append(asyncio.run(bare_loop(args.items, args.seconds, slots)))
            bare_uvloop.append(
                bare_loops(args.items, args.seconds, args.concurrency, args.workers, "uvloop")
            )
            early = args.start_early
            before = service_cpu(service)
            ends: list[tuple[float, float, float]] = []
            if n == 0:  # its CPU figures read before the second upload its Redis ones take
                measure = run(
                    args.items,
                    args.seconds,
                    service,
                    args.chunk_size,
                    args.workers,
                    early,
                    functools.partial(_append_cpu, ends, service),
                )
            else:
                measure = run_again(args.items, args.seconds, service, args.chunk_size, early)
            runs.append(asyncio.run(measure))
            after = ends[0] if ends else service_cpu(service)
            cpu.append(tuple((b - a) / args.items for a, b in zip(before, after, strict=True)))
    rate = statistics.median(m.items_per_second for m in runs)
    run_rate = statistics.median(m.run_items_per_second for m in runs)
    bare_rate = statistics.median(bare)
    report(
        {
            "items": args.items,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "runs": len(runs),
            "start_early": int(args.start_early),
            "items_per_second": rate,
            "ideal_items_per_second": ideal,
            "ratio_to_ideal": rate / ideal,
            # From the upload's answer on: the run alone, without the upload before it.
            "run_items_per_second": run_rate,
            "run_ratio_to_ideal": run_rate / ideal,
            "bare_loop_items_per_second": bare_rate,
            "bare_loop_ratio_to_ideal": bare_rate / ideal,
            "bare_loop_one_process_ratio_to_ideal": statistics.median(bare_one) / ideal,
            # The bare loops on uvloop, the workers' event loop.
            "bare_uvloop_ratio_to_ideal": statistics.median(b[0] for b in bare_uvloop) / ideal,
            "run_ratio_to_bare_uvloop": run_rate / statistics.median(b[0] for b in bare_uvloop),
            "bare_uvloop_cpu_us_per_item": statistics.median(b[1] for b in bare_uvloop) * 1e6,
            "ratio_to_bare_loop": rate / bare_rate,
            "run_ratio_to_bare_loop": run_rate / bare_rate,
            # Each run's own ratios (batchd against the bare loops just before it).
            "min_run_ratio_to_bare_loop": min(
                m.run_items_per_second / b for m, b in zip(runs, bare, strict=True)
            ),
            "max_run_ratio_to_bare_loop": max(
                m.run_items_per_second / b for m, b in zip(runs, bare, strict=True)
            ),
            # CPU per item (the first run's includes its second, paused upload).
            "workers_cpu_us_per_item": statistics.median(c[0] for c in cpu) * 1e6,
            "bare_loop_cpu_us_per_item": statistics.median(bare_cpu) * 1e6,
            "server_cpu_us_per_item": statistics.median(c[1] for c in cpu) * 1e6,
            "redis_cpu_us_per_item": statistics.median(c[2] for c in cpu) * 1e6,
            **runs[0].redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
