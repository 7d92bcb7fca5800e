"""`http.request` items against a local aiohttp server answering in ~5 ms, beside a bare
asyncio + aiohttp script making the same requests at the same concurrency.

The server runs in its own process (`--serve`, `bench.local_server`); it sleeps 5 ms and
answers a short text. batchd runs the requests as `http.request` items in W worker
processes (`--workers`, one unless said) at BATCHD_WORKER_CONCURRENCY C (`--concurrency`,
100). The baseline, the bare script, runs in as many forked processes, sharing the
requests, each keeping C GETs in flight through one aiohttp session (reading each body,
as the handler does), on asyncio's event loop and again on uvloop's (the workers' loop,
BATCHD_WORKER_EVENT_LOOP). Every process shares the machine's cores: the bare script's
with the HTTP server; batchd's workers with the HTTP server, Valkey, the batchd server
and the benchmark's client (its upload, then its watch). A tenth of the items first
goes through each, not counted (the first run on a fresh server is the slowest). Then
the two alternate (`--runs`, each figure the median of the runs), each batchd run after a
run of the bare script while the service idles. Beside the rates, CPU per item: the
workers' and the bare script's processes', each side's together (the figure that holds
on a busy machine, where rates swing), and the batchd server's and Valkey's. How each
side shares the cores: the CPU per item of every process on it (the HTTP server's and
the client's included) and their sum, the ratio of the two sums (the rates' ratio were
both runs CPU-bound), and the cores left idle on average over each run. And Redis
commands per item (INFO commandstats delta from the upload to the terminal snapshot) and
memory per pending item (the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over a second upload of the same items while the
workers are paused, divided by N; that batch is then cancelled, none of its requests
made), both of the first run.

    .venv/bin/python -m bench.http --items 200000   # a full run
    .venv/bin/python -m bench.http --items 20000 --runs 5
    .venv/bin/python -m bench.http --items 20000 --workers 2 --start-early --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from batchd.client import AsyncClient
from bench.local_server import LocalServer, local_server
from bench.service import (
    Measured,
    Service,
    cpu_seconds,
    idle_cores,
    redis_cpu_seconds,
    report,
    run_forked,
    running_service,
    shares,
    upload_and_measure,
    upload_and_watch,
    wait_for_handler,
)

DELAY = 0.005  # the server's answer time


async def _answer(request: web.Request) -> web.Response:
    await asyncio.sleep(DELAY)
    return web.Response(text="ok")


def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def bare_requests_per_second(base_url: str, count: int, concurrency: int) -> float:
    """`concurrency` tasks each making requests until `count` are done."""
    left = iter(range(count))

    async def loop(session: aiohttp.ClientSession) -> None:
        for i in left:
            async with session.get(f"{base_url}/item-{i}") as response:
                response.raise_for_status()
                await response.text()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def items(count: int, base_url: str) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {"url": f"{base_url}/item-{i}"}


@dataclass(frozen=True)
class Run:
    """One batchd run: its figures, the CPU seconds per item of the worker, the batchd
    server, Valkey, the benchmark's client (its upload and watch) and the HTTP server
    over it, and the cores left idle on average."""

    measured: Measured
    worker_cpu: float
    server_cpu: float
    redis_cpu: float
    client_cpu: float
    downstream_cpu: float
    idle_cores: float

    @property
    def total_cpu(self) -> float:
        """Every process's CPU per item: what the run asked of the shared cores."""
        parts = (self.worker_cpu, self.server_cpu, self.redis_cpu, self.client_cpu)
        return sum(parts) + self.downstream_cpu


@dataclass(frozen=True)
class BareRun:
    """One run of the bare script: requests/s, its process's CPU seconds per request and
    the HTTP server's, and the cores left idle on average."""

    rate: float
    cpu: float
    downstream_cpu: float
    idle_cores: float

    @property
    def total_cpu(self) -> float:
        return self.cpu + self.downstream_cpu


async def batchd_run(
    service: Service,
    downstream: LocalServer,
    count: int,
    options: dict[str, object],
    first: bool,
    start_early: bool = False,
    workers: int = 1,
) -> Run:
    """The batch through the service; the Redis figures only on the `first` run (its CPU
    figures are read before the second upload those take)."""
    base_url = f"http://127.0.0.1:{downstream.port}"

    def spent() -> tuple[float, ...]:  # in Run's order
        return (
            sum(cpu_seconds(pid) for pid in service.worker_pids),
            cpu_seconds(service.server_pid),
            redis_cpu_seconds(service.redis_url),
            time.process_time(),
            cpu_seconds(downstream.pid),
        )

    before, idle = spent(), idle_cores()
    after: list[tuple[tuple[float, ...], float]] = []

    def watched() -> None:
        after.append((spent(), idle()))

    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "http.request", workers)
        if first:
            measured = await upload_and_measure(
                client,
                service,
                "http.request",
                lambda: items(count, base_url),
                count,
                options,
                start_early,
                watched,
            )
        else:
            took, run_took = await upload_and_watch(
                client, "http.request", items(count, base_url), count, options, start_early
            )
            watched()
            measured = Measured(took, count / took, 0.0, 0.0, count / run_took)
    ((end, idle_during),) = after
    worker, server, redis, client_cpu, downstream_cpu = (
        (e - b) / count for e, b in zip(end, before, strict=True)
    )
    return Run(measured, worker, server, redis, client_cpu, downstream_cpu, idle_during)


def bare_run(
    downstream: LocalServer, count: int, concurrency: int, loop: str, processes: int = 1
) -> BareRun:
    """The bare script in `processes` forked processes sharing `count` requests, each
    keeping `concurrency` in flight, on the event loop `loop` names (`run_forked`), and
    the HTTP server's CPU meanwhile."""
    base_url = f"http://127.0.0.1:{downstream.port}"
    downstream_cpu = cpu_seconds(downstream.pid)
    works = [
        functools.partial(bare_requests_per_second, base_url, share, concurrency)
        for share in shares(count, processes)
    ]
    forked = run_forked(works, loop)
    return BareRun(
        count / forked.seconds,
        forked.cpu_seconds / count,
        (cpu_seconds(downstream.pid) - downstream_cpu) / count,
        forked.idle_cores,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100, help="per worker process")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (and as many processes of the bare script)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="the batch's chunk_size (0: the handler's)"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="batchd runs, each after a run of the bare script"
    )
    parser.add_argument(
        "--start-early",
        action="store_true",
        help="upload with start_early: items start as their messages arrive",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    env = {
        "BATCHD_WORKER_CONCURRENCY": str(args.concurrency),
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # the local server this bench calls
    }
    options: dict[str, object] = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    bare: list[BareRun] = []
    bare_uvloop: list[BareRun] = []
    runs: list[Run] = []
    count, concurrency, workers, early = (
        args.items,
        args.concurrency,
        args.workers,
        args.start_early,
    )
    with (
        local_server("bench.http") as downstream,
        running_service(workers=workers, env=env) as service,
    ):
        # Each side's first run on a fresh HTTP server and service is its slowest: a
        # tenth of the items through each, not counted.
        warm_up = max(count // 10, 100)
        bare_run(downstream, warm_up, concurrency, "asyncio", workers)
        asyncio.run(batchd_run(service, downstream, warm_up, options, False, early, workers))
        for n in range(max(args.runs, 1)):
            bare.append(bare_run(downstream, count, concurrency, "asyncio", workers))
            bare_uvloop.append(bare_run(downstream, count, concurrency, "uvloop", workers))
            run = batchd_run(service, downstream, count, options, n == 0, early, workers)
            runs.append(asyncio.run(run))
    median = statistics.median
    rate = median(r.measured.items_per_second for r in runs)
    run_rate = median(r.measured.run_items_per_second for r in runs)
    bare_rate = median(b.rate for b in bare)
    bare_uvloop_rate = median(b.rate for b in bare_uvloop)
    worker_cpu, bare_cpu = median(r.worker_cpu for r in runs), median(b.cpu for b in bare)
    total_cpu, bare_total_cpu = median(r.total_cpu for r in runs), median(b.total_cpu for b in bare)
    ratios = [r.measured.items_per_second / b.rate for r, b in zip(runs, bare, strict=True)]
    report(
        {
            "items": args.items,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "runs": len(runs),
            "start_early": int(args.start_early),
            "items_per_second": rate,
            "bare_aiohttp_requests_per_second": bare_rate,
            "ratio_to_bare": rate / bare_rate,
            # Each run against the bare script's run just before it.
            "min_ratio_to_bare": min(ratios),
            "max_ratio_to_bare": max(ratios),
            # From the upload's answer on: the run alone, without the upload before it.
            "run_items_per_second": run_rate,
            "run_ratio_to_bare": run_rate / bare_rate,
            "worker_cpu_us_per_item": worker_cpu * 1e6,
            "bare_cpu_us_per_request": bare_cpu * 1e6,
            "cpu_ratio_bare_to_worker": bare_cpu / worker_cpu,
            # The same script on uvloop, the workers' loop: what aiohttp manages on it.
            "bare_uvloop_requests_per_second": bare_uvloop_rate,
            "ratio_to_bare_uvloop": rate / bare_uvloop_rate,
            "run_ratio_to_bare_uvloop": run_rate / bare_uvloop_rate,
            "bare_uvloop_cpu_us_per_request": median(b.cpu for b in bare_uvloop) * 1e6,
            "server_cpu_us_per_item": median(r.server_cpu for r in runs) * 1e6,
            "redis_cpu_us_per_item": median(r.redis_cpu for r in runs) * 1e6,
            "client_cpu_us_per_item": median(r.client_cpu for r in runs) * 1e6,
            # How each side shares the cores: the HTTP server's CPU, every process's
            # together, and the cores left idle on average (0: the run was CPU-bound).
            "downstream_cpu_us_per_item": median(r.downstream_cpu for r in runs) * 1e6,
            "bare_downstream_cpu_us_per_request": median(b.downstream_cpu for b in bare) * 1e6,
            "total_cpu_us_per_item": total_cpu * 1e6,
            "bare_total_cpu_us_per_request": bare_total_cpu * 1e6,
            # The ratio two CPU-bound runs would show: what the cores allow batchd.
            "total_cpu_ratio_bare_to_batchd": bare_total_cpu / total_cpu,
            "idle_cores": median(r.idle_cores for r in runs),
            "bare_idle_cores": median(b.idle_cores for b in bare),
            **runs[0].measured.redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
