"""Redis's cost per item, by handler and chunk size, and Redis memory per item by params
size, in one run: what decides how far one Redis primary carries batchd
(docs/scaling.md).

One service (private Valkey, AOF on, `batchd-server`, one `batchd-worker` at
BATCHD_WORKER_CONCURRENCY 100), then for each handler (`noop`; `sleep` of 1 ms;
`http.request` against a local aiohttp server answering in ~5 ms, `bench.http`) and each
chunk size, a batch of N items uploaded and watched to its terminal snapshot. Over that
run, from Valkey's own counters, per item:
- `commands_per_item`: INFO commandstats calls (the commands a Lua script runs count one
  each, beside its EVALSHA), and `scripts_per_item`: EVALSHA and EVAL calls alone;
- `round_trips_per_item`: INFO stats `total_reads_processed` (each read of a client
  socket: one command or one pipeline or transaction sent at once);
- `net_bytes_per_item`: `total_net_input_bytes` + `total_net_output_bytes`;
- `redis_cpu_us_per_item`: Valkey's `used_cpu_user` + `used_cpu_sys` (the whole
  process: commands, sockets, AOF writes) — CPU time, so it holds on a busy machine
  better than a rate does, though a crowded cache raises it;
- `idle_commands_per_second` (and round trips, and Valkey's CPU ms per second): the
  same counters over `--idle-seconds` before the case's upload, with nothing to run:
  the heartbeats, polls and sweeps that cost per second rather than per item;
  `commands_per_item_less_idle` and `redis_cpu_us_per_item_less_idle` take that rate
  times the run's seconds off.

Then memory, `noop` items whose params carry a string of 0, 100 and 1,000 bytes, in
chunks of 100 (the default) and 1,000 (a chunk's outcomes are one hash: past 128 fields
Valkey stores it as a hash table rather than a listpack): `bytes_per_pending_item` is the
growth of Redis's stored bytes (`bench.service.redis_stored_bytes`) over an upload while
the worker is paused,
`bytes_per_finished_item` the growth from before that upload to the batch's terminal
snapshot (its outcomes, kept for the retention).

Then pools of `--idle-workers` worker processes (and a server) with nothing to run, for
`--idle-pool-seconds` once they all serve: `idle_workers_<n>_commands_per_second`, round
trips and Valkey CPU ms per second — what a pool costs Redis by its size alone (a worker
with room reads the head of every queue it serves each BATCHD_WORKER_POLL_INTERVAL).

Then what one primary sustains of the commands batchd's scripts are made of, with
`redis-benchmark` (skipped when it is not on PATH) against a Valkey of its own (AOF on,
as the service's): HSET, HINCRBY and ZADD on random keys, and EVALSHA of a small script
of the shape batchd's are (an HMGET, an HINCRBY and a ZADD, on a hash-tagged key and a
global zset), 50 connections, one command per round trip and pipelines of 16:
`primary_<command>_p<depth>_ops_per_second` and `..._cpu_us_per_op` (Valkey's CPU time
over the run divided by the commands: what a core of it costs per command, whatever
else the machine runs). `redis-benchmark` shares the machine's cores with the Valkey it
measures: the rates are a floor of what a dedicated host gives.

    .venv/bin/python -m bench.redis_cost --items 50000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from batchd.client import AsyncClient, BatchState, ItemLike
from batchd.core.embedded_redis import EmbeddedRedis
from bench.local_server import local_server
from bench.service import (
    Service,
    _redis_info,
    paused,
    redis_stored_bytes,
    report,
    running_service,
    wait_for_handler,
)

CONCURRENCY = 100  # batchd's default BATCHD_WORKER_CONCURRENCY
SLEEP_SECONDS = 0.001
SCRIPT_CALLS = ("cmdstat_evalsha", "cmdstat_eval")


def counters(url: str) -> dict[str, float]:
    """Valkey's counters that the per-item figures are deltas of."""
    stats = _redis_info(url, "commandstats")
    info = {**_redis_info(url, "stats"), **_redis_info(url, "cpu")}
    return {
        "commands": sum(int(v["calls"]) for v in stats.values()),
        "scripts": sum(int(stats[name]["calls"]) for name in SCRIPT_CALLS if name in stats),
        "round_trips": int(info["total_reads_processed"]),
        "net_bytes": int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"]),
        "cpu_us": (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6,
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


async def run_batch(
    client: AsyncClient, handler: str, items: Iterable[ItemLike], count: int, chunk_size: int
) -> str:
    result = await client.upload(handler, items, options={"chunk_size": chunk_size})
    return await watch_done(client, result.batch.batch_id, count)


async def watch_done(client: AsyncClient, batch_id: str, count: int) -> str:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.1):
        last = progress
    if last is None or last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    return batch_id


async def cost(
    client: AsyncClient, service: Service, name: str, handler: str,
    items: Callable[[], Iterable[ItemLike]], count: int, chunk_size: int, idle_seconds: float,
) -> dict[str, float]:  # fmt: skip
    """One case's per-item figures, named `<name>_<figure>`."""
    url = service.redis_url
    idle_start = counters(url)
    await asyncio.sleep(idle_seconds)
    idle = delta(counters(url), idle_start)
    before = counters(url)
    started = time.perf_counter()
    await run_batch(client, handler, items(), count, chunk_size)
    seconds = time.perf_counter() - started
    used = delta(counters(url), before)
    idle_commands = idle["commands"] / idle_seconds
    return {
        f"{name}_items_per_second": count / seconds,
        f"{name}_commands_per_item": used["commands"] / count,
        f"{name}_commands_per_item_less_idle": (used["commands"] - idle_commands * seconds) / count,
        f"{name}_scripts_per_item": used["scripts"] / count,
        f"{name}_round_trips_per_item": used["round_trips"] / count,
        f"{name}_net_bytes_per_item": used["net_bytes"] / count,
        f"{name}_redis_cpu_us_per_item": used["cpu_us"] / count,
        f"{name}_idle_commands_per_second": idle_commands,
        f"{name}_idle_round_trips_per_second": idle["round_trips"] / idle_seconds,
        f"{name}_idle_redis_cpu_ms_per_second": idle["cpu_us"] / 1000 / idle_seconds,
        f"{name}_redis_cpu_us_per_item_less_idle": (
            used["cpu_us"] - idle["cpu_us"] / idle_seconds * seconds
        )
        / count,
    }


async def memory(
    client: AsyncClient, service: Service, name: str, items: Callable[[], Iterable[ItemLike]],
    count: int, chunk_size: int,
) -> dict[str, float]:  # fmt: skip
    """Bytes per pending item (upload, worker paused) and per finished item (the batch
    done, its outcomes kept), `noop` items."""
    before = redis_stored_bytes(service.redis_url)
    with paused(service.worker_pids):
        result = await client.upload("noop", items(), options={"chunk_size": chunk_size})
        pending = redis_stored_bytes(service.redis_url) - before
    await watch_done(client, result.batch.batch_id, count)
    finished = redis_stored_bytes(service.redis_url) - before
    return {
        f"{name}_bytes_per_pending_item": pending / count,
        f"{name}_bytes_per_finished_item": finished / count,
    }


def noop_items(count: int, pad: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    params: dict[str, Any] = {"pad": "x" * pad} if pad else {}
    for i in range(count):
        yield f"item-{i}", params


def sleep_items(count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(count):
        yield f"item-{i}", {"seconds": SLEEP_SECONDS}


def http_items(count: int, base_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(count):
        yield f"item-{i}", {"url": f"{base_url}/item-{i}"}


async def measure(service: Service, args: argparse.Namespace, base_url: str) -> dict[str, float]:
    n = args.items
    handlers: dict[str, tuple[str, Callable[[], Iterable[ItemLike]]]] = {
        "noop": ("noop", lambda: noop_items(n)),
        "sleep": ("sleep", lambda: sleep_items(n)),
        "http": ("http.request", lambda: http_items(n, base_url)),
    }
    figures: dict[str, float] = {"items": n}
    async with AsyncClient(service.target) as client:
        for handler, _ in handlers.values():
            await wait_for_handler(client, handler)
        for short in args.handlers:
            handler, items = handlers[short]
            for size in args.chunk_sizes:
                figures.update(
                    await cost(
                        client, service, f"{short}_{size}", handler, items, n, size,
                        args.idle_seconds,
                    )
                )  # fmt: skip
        for size in args.memory_chunk_sizes:
            for pad in args.pads:
                figures.update(
                    await memory(
                        client, service, f"params_{pad}_chunk_{size}",
                        lambda pad=pad: noop_items(args.memory_items, pad),  # type: ignore[misc]
                        args.memory_items, size,
                    )
                )  # fmt: skip
    return figures


async def idle_pool(workers: int, seconds: float) -> dict[str, float]:
    """Valkey's counters per second with `workers` idle worker processes (and a server),
    once they all serve: the per-second cost of a pool with nothing to run."""
    with running_service(workers=workers) as service:
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "noop", workers)
        await asyncio.sleep(1)  # past the workers' start-up calls
        before = counters(service.redis_url)
        await asyncio.sleep(seconds)
        used = delta(counters(service.redis_url), before)
    name = f"idle_workers_{workers}"
    return {
        f"{name}_commands_per_second": used["commands"] / seconds,
        f"{name}_round_trips_per_second": used["round_trips"] / seconds,
        f"{name}_redis_cpu_ms_per_second": used["cpu_us"] / 1000 / seconds,
    }


# A script of the shape of batchd's per-batch ones: reads and counts in the batch's
# hash, files a member in a global zset.
PRIMARY_SCRIPT = """
local m = redis.call('HMGET', KEYS[1], 'state', 'total')
redis.call('HINCRBY', KEYS[1], 'n_ok', 1)
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return m[1]
"""


def primary_commands(sha: str) -> dict[str, list[str]]:
    meta = "batchd:b:{__rand_int__}:meta"
    return {
        "hset": ["HSET", meta, "n_ok", "1"],
        "hincrby": ["HINCRBY", meta, "n_ok", "1"],
        "zadd": ["ZADD", "batchd:leases", "__rand_int__", "m:__rand_int__"],
        "evalsha": ["EVALSHA", sha, "2", meta, "batchd:leases", "__rand_int__", "m:__rand_int__"],
    }


def primary(requests: int) -> dict[str, float]:
    """`redis-benchmark` of each command at pipeline depths 1 and 16: ops/s and Valkey's
    CPU µs per op."""
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        print("redis-benchmark is not on PATH: no primary figures")
        return {}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        client = SyncRedis.from_url(server.url)
        try:
            sha = str(client.script_load(PRIMARY_SCRIPT))
            for name, command in primary_commands(sha).items():
                for depth in (1, 16):
                    cpu = _redis_info(server.url, "cpu")
                    before = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
                    done = subprocess.run(
                        [tool, "-h", "127.0.0.1", "-p", str(server.port), "-n", str(requests),
                         "-c", "50", "-P", str(depth), "-r", "100000", "-q", "--csv", *command],
                        check=True, capture_output=True, text=True, timeout=600,
                    )  # fmt: skip
                    cpu = _redis_info(server.url, "cpu")
                    used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]) - before
                    rate = float(done.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
                    figures[f"primary_{name}_p{depth}_ops_per_second"] = rate
                    figures[f"primary_{name}_p{depth}_cpu_us_per_op"] = used * 1e6 / requests
        finally:
            client.close()
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items of each cost case")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[10, 100, 1000])
    cases = ["noop", "sleep", "http"]
    parser.add_argument("--handlers", nargs="*", choices=cases, default=cases)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--pads", type=int, nargs="*", default=[0, 100, 1000])
    parser.add_argument("--memory-items", type=int, default=20_000)
    parser.add_argument("--memory-chunk-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--idle-workers", type=int, nargs="*", default=[1, 4], help="idle pools to measure"
    )
    parser.add_argument("--idle-pool-seconds", type=float, default=5.0)
    parser.add_argument(
        "--primary-requests", type=int, default=200_000, help="per redis-benchmark run (0: none)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {
        "BATCHD_WORKER_CONCURRENCY": str(CONCURRENCY),
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # the local server http.request calls
    }
    with local_server("bench.http") as server, running_service(env=env) as service:
        figures = asyncio.run(measure(service, args, f"http://127.0.0.1:{server.port}"))
    for workers in args.idle_workers:
        figures.update(asyncio.run(idle_pool(workers, args.idle_pool_seconds)))
    if args.primary_requests:
        figures.update(primary(args.primary_requests))
    report(figures, args.json)


if __name__ == "__main__":
    main()
