"""K concurrent WatchProgress streams on one running batch: whether every watcher is
served, the server's CPU time and memory with them open, how `GetBatch` answers beside
them, and how late the last watcher hears that the batch ended — beside a single watcher
on the same run, and beside grpc.aio alone fanning a message out to as many streams.

Each round uploads N `noop` items while the worker is paused and opens its watchers,
spread over C connections (each client channel its own TCP connection) and P client
processes (`--processes`: each runs its share of the watchers on its share of the
channels and reports to this one; the one-watcher round has one), each asking for
snapshots and heartbeats every `--ask` seconds (the server holds them to its floors of
BATCHD_WATCH_MIN_INTERVAL and BATCHD_WATCH_MIN_HEARTBEAT, 1 s). Once every watcher has
its first snapshot, or failed, or `--deadline` passed, the round reads:

- over `--hold` seconds with the watchers alone, the server's CPU seconds (utime +
  stime, /proc/<pid>/stat) per watcher-minute, then its RSS;
- over another `--hold` seconds, `GetBatch` latency from another connection, one call
  after another: p50 and p99.

Then it resumes the worker and waits (to the deadline) for every terminal snapshot: the
delay is from the batch's end_time to the last watcher's terminal snapshot (the clocks
of one machine), and the client processes' CPU seconds from the hold to the end. A
stream that ends in an error is counted by its code, never waited for. Redis: commands
per item (INFO commandstats delta over the round) and bytes per pending item (growth of
Redis's stored bytes over the upload, divided by N).

The baseline, in the same run: the same K watchers, processes and connections on a bare
grpc.aio server (`bench.bare_fanout`) that sends each stream one message and OK at once
when released: the delay from the release to the last stream's message, that server's
CPU over it, and its RSS with the streams open.

    .venv/bin/python -m bench.watchers --watchers 10000 --channels 100 --processes 4 \
        --items 200000  # full
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import psutil

from batchd.client import AsyncClient, BatchdError, BatchState
from bench import bare_fanout
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
    client_cpu_seconds: float  # the client processes', from the hold to the end


async def get_latencies(client: AsyncClient, batch_id: str, seconds: float) -> list[float]:
    """GetBatch, one call after another for `seconds`: each call's latency (s)."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        await client.get(batch_id)
        latencies.append(time.perf_counter() - start)
    return latencies


@dataclass
class Seen:
    """What the watchers of a round saw, over every client process."""

    firsts: int = 0
    terminal: list[float] = field(default_factory=list)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    client_cpu: float = 0.0  # the client processes' CPU seconds from the hold to the end


WatchOne = Callable[[int, Watchers], Coroutine[Any, Any, None]]  # watcher i, reporting to seen


class InProcess:
    """The round's watchers in this process."""

    def __init__(self, watchers: int) -> None:
        self.watchers = watchers
        self.seen = Watchers(expected=watchers)
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, watch: WatchOne, deadline: float) -> None:
        """Opens the watchers; returns once each has its first snapshot or failed."""
        self.tasks = [asyncio.create_task(watch(i, self.seen)) for i in range(self.watchers)]
        with contextlib.suppress(TimeoutError):  # reported: first_snapshots < watchers
            await asyncio.wait_for(self.seen.first.wait(), deadline)

    async def finish(self, deadline: float) -> Seen:
        """Waits for every terminal snapshot, to the deadline."""
        _, pending = await asyncio.wait(self.tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        seen = self.seen
        failed = collections.Counter(seen.failed)
        if pending:
            failed["no terminal snapshot by the deadline"] = len(pending)
        return Seen(seen.firsts, seen.terminal, failed)


class InProcesses:
    """The round's watchers split over client processes, each on channels of its own;
    `bare`: streams of the bare grpc.aio server (bench.bare_fanout), not WatchProgress."""

    def __init__(
        self,
        target: str,
        watchers: int,
        args: argparse.Namespace,
        *,
        processes: int | None = None,
        bare: bool = False,
    ) -> None:
        self.target = target
        processes = args.processes if processes is None else processes
        self.shares = _split(watchers, processes)
        self.channels = _split(max(args.channels, processes), processes)
        self.ask = args.ask
        self.bare = bare
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []

    async def open(self, batch_id: str, deadline: float) -> None:
        spawn = multiprocessing.get_context("spawn")
        for share, channels in zip(self.shares, self.channels, strict=True):
            mine, theirs = spawn.Pipe()
            process = spawn.Process(
                target=client_process,
                args=(theirs, self.target, batch_id, share, channels, self.ask, deadline),
                kwargs={"bare": self.bare},
                daemon=True,
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        await self._replies()  # each has its watchers' first snapshots (or failures)

    async def finish(self, deadline: float) -> Seen:
        seen = Seen()
        for firsts, terminal, failed, cpu in await self._replies():
            seen.firsts += firsts
            seen.terminal += terminal
            seen.failed.update(failed)
            seen.client_cpu += cpu
        for process in self.processes:
            process.join(30)
        return seen

    async def _replies(self) -> list[Any]:
        return await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def client_process(
    pipe: Connection, target: str, batch_id: str, watchers: int, channels: int,
    ask: float, deadline: float, *, bare: bool = False,
) -> None:  # fmt: skip
    """One client process: `watchers` on `channels` of its own; sends the parent a
    message once every first snapshot is in, then what it saw once every watcher ended."""
    run = _client_process(pipe, target, batch_id, watchers, channels, ask, deadline, bare)
    asyncio.run(run)


async def _client_process(
    pipe: Connection, target: str, batch_id: str, watchers: int, channels: int,
    ask: float, deadline: float, bare: bool,
) -> None:  # fmt: skip
    closing: list[Callable[[], Awaitable[None]]] = []
    watch: WatchOne
    if bare:
        raw = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(channels)]
        closing = [channel.close for channel in raw]

        def watch(i: int, seen: Watchers) -> Coroutine[Any, Any, None]:
            return bare_fanout.watch(raw[i % channels], seen)

    else:
        clients = [AsyncClient(target, channel_options=OWN_CONNECTION) for _ in range(channels)]
        closing = [client.close for client in clients]

        def watch(i: int, seen: Watchers) -> Coroutine[Any, Any, None]:
            return watch_one(clients[i % channels], batch_id, ask, seen)

    try:
        here = InProcess(watchers)
        await here.open(watch, deadline)
        pipe.send(None)
        cpu = time.process_time()
        seen = await here.finish(deadline)
        cpu = time.process_time() - cpu
        pipe.send((seen.firsts, seen.terminal, dict(seen.failed), cpu))
    finally:
        for close in closing:
            await close()


@dataclass(frozen=True)
class Bare:
    """The baseline's figures (bench.bare_fanout)."""

    last_message_seconds: float  # from the release to the last stream's last message
    server_cpu_seconds: float  # the bare server's, from the release to the last message
    server_rss_mib: float  # the bare server's, with every stream open
    failed: int


async def bare_round(args: argparse.Namespace) -> Bare:
    """The same watchers, processes and connections on the bare grpc.aio server."""
    spawn = multiprocessing.get_context("spawn")
    mine, theirs = spawn.Pipe()
    server = spawn.Process(target=bare_fanout.serve, args=(theirs,), daemon=True)
    server.start()
    try:
        target = f"127.0.0.1:{await asyncio.to_thread(mine.recv)}"
        watchers = InProcesses(target, args.watchers, args, bare=True)
        await watchers.open("", args.deadline)
        assert server.pid is not None
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
        cpu = cpu_seconds(server.pid)
        released = time.time()
        await bare_fanout.release(target)
        seen = await watchers.finish(args.deadline)
        cpu = cpu_seconds(server.pid) - cpu
    finally:
        server.terminate()
        server.join(30)
    last = max(seen.terminal) - released if seen.terminal else float("nan")
    return Bare(last, cpu, rss, args.watchers - len(seen.terminal))


async def round_(
    service: Service,
    client: AsyncClient,
    probe: AsyncClient,
    watchers: InProcesses,
    args: argparse.Namespace,
) -> Round:
    url = service.redis_url
    before = redis_commands(url)
    with paused(service.worker_pids):
        upload = client.upload("noop", items(args.items), options={"chunk_size": 1000})
        batch, grown = await redis_memory_growth(url, upload)
        batch_id = batch.batch.batch_id
        await watchers.open(batch_id, args.deadline)
        cpu = cpu_seconds(service.server_pid)
        await asyncio.sleep(args.hold)
        cpu = cpu_seconds(service.server_pid) - cpu
        rss = psutil.Process(service.server_pid).memory_info().rss / 2**20
        latencies = await get_latencies(probe, batch_id, args.hold)
    seen = await watchers.finish(args.deadline)
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
        failed=dict(seen.failed),
        cpu_per_watcher_minute=cpu / (max(seen.firsts, 1) * args.hold / 60),
        server_rss_mib=rss,
        get_p50_ms=statistics.median(latencies) * 1000,
        get_p99_ms=cut[98] * 1000,
        delay_seconds=delay,
        redis_commands_per_item=commands / args.items,
        redis_bytes_per_pending_item=grown / args.items,
        client_cpu_seconds=seen.client_cpu,
    )


async def run(service: Service, args: argparse.Namespace) -> dict[str, float]:
    client = AsyncClient(service.target, channel_options=OWN_CONNECTION)
    probe = AsyncClient(service.target, channel_options=OWN_CONNECTION)
    try:
        await wait_for_handler(client, "noop")
        one = await round_(
            service, client, probe, InProcesses(service.target, 1, args, processes=1), args
        )
        many = await round_(
            service, client, probe, InProcesses(service.target, args.watchers, args), args
        )
        bare = await bare_round(args)
    finally:
        for each in (client, probe):
            await each.close()
    for name, count in many.failed.items():
        print(f"failed streams: {count:,} {name}")
    return {
        "watchers": args.watchers,
        "channels": args.channels,
        "client_processes": args.processes,
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
        "client_cpu_seconds": many.client_cpu_seconds,
        "bare_grpc_last_message_seconds": bare.last_message_seconds,
        "bare_grpc_server_cpu_seconds": bare.server_cpu_seconds,
        "bare_grpc_server_rss_mib": bare.server_rss_mib,
        "bare_grpc_failed_streams": bare.failed,
        "delay_ratio_to_bare_grpc": many.delay_seconds / bare.last_message_seconds,
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
    parser.add_argument(
        "--processes", type=int, default=1, help="client processes the K watchers are split over"
    )
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
    if not 1 <= args.processes <= args.watchers:
        parser.error("--processes: from 1 to --watchers")
    # The service's own watch floors (1 s), which other scenarios lower to time batches.
    floors = {"BATCHD_WATCH_MIN_INTERVAL": "1", "BATCHD_WATCH_MIN_HEARTBEAT": "1"}
    with running_service(env={"BATCHD_WORKER_TTL": "3600", **floors}) as service:
        figures = asyncio.run(run(service, args))
    report(figures, args.json)


if __name__ == "__main__":
    main()
