"""K concurrent WatchProgress streams on one running batch: whether every watcher is
served, the server's CPU time and memory with them open, how `GetBatch` answers beside
them, and how late the last watcher hears that the batch ended — beside a single watcher
on the same run.

Each round uploads N `noop` items while the worker is paused and opens its watchers,
spread over C connections (each client channel its own TCP connection), each asking for
snapshots and heartbeats every `--ask` seconds (the server holds them to its floors of
BATCHD_WATCH_MIN_INTERVAL and BATCHD_WATCH_MIN_HEARTBEAT, 1 s). Once every watcher has
its first snapshot, or failed, or `--deadline` passed, the round holds them open for
`--hold` seconds and reads, meanwhile:

- the server's CPU seconds (utime + stime, /proc/<pid>/stat) per watcher-minute;
- the server's RSS with the watchers open;
- `GetBatch` latency from another connection, one call after another: p50 and p99.

Then it resumes the worker and waits (to the deadline) for every terminal snapshot: the
delay is from the batch's end_time to the last watcher's terminal snapshot. A stream that
ends in an error is counted by its code, never waited for. Redis: commands per item
(INFO commandstats delta over the round) and bytes per pending item (growth of Redis's
stored bytes over the upload, divided by N).

    .venv/bin/python -m bench.watchers --watchers 10000 --channels 100 --items 200000  # full
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from batchd.client import AsyncClient, BatchdError, BatchState
from bench.service import (
    Service,
    cpu_seconds,
    paused,
    redis_commands,
    redis_memory_growth,
    report,
    running_service,
    wait_for_handler,
)
from bench.upload_noop import items

# Each client channel its own connection: gRPC otherwise shares one TCP connection
# between channels to the same target, and the server's per-connection stream cap
# (BATCHD_GRPC_MAX_CONCURRENT_STREAMS) would queue the rest.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Watchers:
    """What the watchers of a round saw."""

    first: asyncio.Event = field(default_factory=asyncio.Event)
    firsts: int = 0
    terminal: list[float] = field(default_factory=list)  # when each came (time.time())
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    expected: int = 0

    def settled(self) -> bool:
        return self.firsts + sum(self.failed.values()) >= self.expected


async def watch_one(client: AsyncClient, batch_id: str, ask: float, seen: Watchers) -> None:
    first = True
    try:
        async for progress in client.watch(batch_id, min_interval=ask, heartbeat_interval=ask):
            if first:
                first = False
                seen.firsts += 1
                if seen.settled():
                    seen.first.set()
            if progress.state.is_terminal:
                if progress.state != BatchState.COMPLETED:
                    raise RuntimeError(f"the batch did not complete: {progress}")
                seen.terminal.append(time.time())
                return
        seen.failed["ended without a terminal snapshot"] += 1
    except BatchdError as exc:
        seen.failed[exc.code.name] += 1
    if first and seen.settled():
        seen.first.set()


@dataclass(frozen=True)
class Round:
    """One round's figures."""

    first_snapshots: int
    terminal_snapshots: int
    failed: dict[str, int]
    cpu_per_watcher_minute: float  # server CPU seconds, watchers open and the batch still
    server_rss_mib: float  # with the watchers open
    get_p50_ms: float
    get_p99_ms: float
    delay_seconds: float  # from the batch's end_time to the last terminal snapshot
    redis_commands_per_item: float
    redis_bytes_per_pending_item: float


async def get_latencies(client: AsyncClient, batch_id: str, seconds: float) -> list[float]:
    """GetBatch, one call after another for `seconds`: each call's latency (s)."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        await client.get(batch_id)
        latencies.append(time.perf_counter() - start)
    return latencies


async def round_(
    service: Service,
    clients: Sequence[AsyncClient],
    probe: AsyncClient,
    watchers: int,
    args: argparse.Namespace,
) -> Round:
    client, url = clients[0], service.redis_url
    before = redis_commands(url)
    seen = Watchers(expected=watchers)
    with paused(service.worker_pids):
        upload = client.upload("noop", items(args.items), options={"chunk_size": 1000})
        batch, grown = await redis_memory_growth(url, upload)
        batch_id = batch.batch.batch_id
        tasks = [
            asyncio.create_task(watch_one(clients[i % len(clients)], batch_id, args.ask, seen))
            for i in range(watchers)
        ]
        with contextlib.suppress(TimeoutError):  # reported: first_snapshots < watchers
            await asyncio.wait_for(seen.first.wait(), args.deadline)
        cpu = cpu_seconds(service.server_pid)
        latencies = await get_latencies(probe, batch_id, args.hold)
        cpu = cpu_seconds(service.server_pid) - cpu
        rss = psutil.Process(service.server_pid).memory_info().rss / 2**20
    _, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for task in pending:
        task.cancel()
    failed = dict(seen.failed)
    if pending:
        failed["no terminal snapshot by the deadline"] = len(pending)
    commands = redis_commands(url) - before
    ended = (await client.get(batch_id)).end_time
    if ended is None or not seen.terminal:
        delay = float("nan")
    else:
        delay = max(seen.terminal) - ended.timestamp()
    cut = statistics.quantiles(latencies, n=100)
    return Round(
        first_snapshots=seen.firsts,
        terminal_snapshots=len(seen.terminal),
        failed=failed,
        cpu_per_watcher_minute=cpu / (max(seen.firsts, 1) * args.hold / 60),
        server_rss_mib=rss,
        get_p50_ms=statistics.median(latencies) * 1000,
        get_p99_ms=cut[98] * 1000,
        delay_seconds=delay,
        redis_commands_per_item=commands / args.items,
        redis_bytes_per_pending_item=grown / args.items,
    )


async def run(service: Service, args: argparse.Namespace) -> dict[str, float]:
    clients = [
        AsyncClient(service.target, channel_options=OWN_CONNECTION) for _ in range(args.channels)
    ]
    probe = AsyncClient(service.target, channel_options=OWN_CONNECTION)
    try:
        await wait_for_handler(clients[0], "noop")
        one = await round_(service, clients, probe, 1, args)
        many = await round_(service, clients, probe, args.watchers, args)
    finally:
        for client in (*clients, probe):
            await client.close()
    for name, count in many.failed.items():
        print(f"failed streams: {count:,} {name}")
    return {
        "watchers": args.watchers,
        "channels": args.channels,
        "items": args.items,
        "first_snapshots": many.first_snapshots,
        "terminal_snapshots": many.terminal_snapshots,
        "failed_streams": sum(many.failed.values()),
        "server_cpu_seconds_per_watcher_minute": many.cpu_per_watcher_minute,
        "server_rss_mib": many.server_rss_mib,
        "server_rss_mib_one_watcher": one.server_rss_mib,
        "get_batch_p50_ms": many.get_p50_ms,
        "get_batch_p50_ms_one_watcher": one.get_p50_ms,
        "get_batch_p99_ms": many.get_p99_ms,
        "get_batch_p99_ms_one_watcher": one.get_p99_ms,
        "last_watcher_delay_seconds": many.delay_seconds,
        "one_watcher_delay_seconds": one.delay_seconds,
        "redis_commands_per_item": many.redis_commands_per_item,
        "redis_commands_per_item_one_watcher": one.redis_commands_per_item,
        "redis_bytes_per_pending_item": many.redis_bytes_per_pending_item,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.watchers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--watchers", type=int, default=1000, help="watchers in the K round")
    parser.add_argument("--channels", type=int, default=10, help="connections they share")
    parser.add_argument("--items", type=int, default=50_000, help="noop items in each batch")
    parser.add_argument(
        "--ask", type=float, default=0.01, help="snapshot and heartbeat interval asked (s)"
    )
    parser.add_argument("--hold", type=float, default=5.0, help="seconds held open, measured")
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="seconds to wait for each phase at most"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    # The service's own watch floors (1 s), which other scenarios lower to time batches.
    floors = {"BATCHD_WATCH_MIN_INTERVAL": "1", "BATCHD_WATCH_MIN_HEARTBEAT": "1"}
    with running_service(env={"BATCHD_WORKER_TTL": "3600", **floors}) as service:
        figures = asyncio.run(run(service, args))
    report(figures, args.json)


if __name__ == "__main__":
    main()
