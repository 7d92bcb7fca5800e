"""What every benchmark scenario shares: the service in subprocesses on a private Redis,
the wait for its workers, the Redis figures every scenario reports beside its own
(commands per item, memory per pending item), and the printed and JSON figures."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis as SyncRedis

from batchd.client import AsyncClient, BatchState, ItemLike
from batchd.core.embedded_redis import EmbeddedRedis, free_port
from batchd.worker.main import loop_factory

T = TypeVar("T")


@dataclass(frozen=True)
class Service:
    port: int
    redis_url: str
    server_pid: int
    worker_pids: tuple[int, ...]

    @property
    def worker_pid(self) -> int:
        """The first worker's pid (every service has at least one)."""
        return self.worker_pids[0]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def running_service(
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    worker_envs: Sequence[Mapping[str, str]] = (),
) -> Iterator[Service]:
    """A private Valkey (AOF on, as the embedded default), `batchd-server` and `workers`
    `batchd-worker` processes (with `env` added to their BATCHD_* settings, and
    `worker_envs[i]` to worker i's), stopped (SIGTERM) at the end."""
    if workers < 1:
        raise ValueError("a service needs at least one worker to publish its handlers")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        port = free_port()
        # Watch floors far below the service's 1 s: the scenarios time batches by their
        # terminal snapshot, which the floors would round up to whole seconds.
        full_env = dict(os.environ, BATCHD_REDIS_URL=redis.url, BATCHD_PORT=str(port),
                        BATCHD_HOST="127.0.0.1", BATCHD_LOG_LEVEL="warning",
                        BATCHD_WATCH_MIN_INTERVAL="0.01",
                        BATCHD_WATCH_MIN_HEARTBEAT="0.01",
                        # No /metrics listener on the default port unless a scenario
                        # asks (bench.noop --metrics): runs may overlap on a host.
                        BATCHD_METRICS_PORT="0", BATCHD_WORKER_METRICS_PORT="0")  # fmt: skip
        full_env.update(env or {})
        bin_dir = Path(sys.executable).parent
        server = subprocess.Popen([bin_dir / "batchd-server"], env=full_env)
        extra = [*worker_envs, *([{}] * workers)][:workers]
        pool = [
            subprocess.Popen([bin_dir / "batchd-worker"], env={**full_env, **more})
            for more in extra
        ]
        try:
            yield Service(port, redis.url, server.pid, tuple(w.pid for w in pool))
        finally:
            for process in (server, *pool):
                process.send_signal(signal.SIGCONT)  # in case a scenario left it paused
                process.terminate()
                process.wait(30)


@contextmanager
def paused(pids: tuple[int, ...]) -> Iterator[None]:
    """Stops processes (SIGSTOP) for a while: workers that hold no work take none."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def wait_for_handler(client: AsyncClient, name: str, workers: int = 1) -> None:
    """Workers publish their catalog at start-up, in other processes: poll until
    `workers` of them serve `name`."""
    while not await _serves(client, name, workers):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _serves(client: AsyncClient, name: str, workers: int) -> bool:
    try:
        return any(h.name == name and h.live_workers >= workers for h in await client.handlers())
    except Exception:  # the server may not listen yet
        return False


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_cores() -> Callable[[], float]:
    """Starts a count of the machine's idle time (/proc/stat's first line, idle and
    iowait); the function returned gives the cores idle on average since."""

    def read() -> tuple[int, int]:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)

    idle, total = read()
    cores = os.cpu_count() or 1

    def since() -> float:
        now_idle, now_total = read()
        return cores * (now_idle - idle) / max(now_total - total, 1)

    return since


# Forked baseline processes start together this long after their pool is up.
FORK_START_AHEAD = 0.3


@dataclass(frozen=True)
class Forked:
    """A `run_forked`: from the common start to the last process's end, the processes'
    CPU (start-up included, a few milliseconds), and the cores left idle meanwhile."""

    seconds: float
    cpu_seconds: float
    idle_cores: float


def run_forked(works: Sequence[Callable[[], Coroutine[Any, Any, object]]], loop: str) -> Forked:
    """Each of `works` (picklable: a module function or a partial of one) in a forked
    process of its own, on the event loop `loop` names (BATCHD_WORKER_EVENT_LOOP's
    values), all starting at once: a baseline split over processes as the workers are."""
    cpu = _children_cpu()
    with multiprocessing.get_context("fork").Pool(len(works)) as pool:
        start_at = time.time() + FORK_START_AHEAD
        ending = pool.starmap_async(_run_at, [(work, start_at, loop) for work in works])
        time.sleep(max(start_at - time.time(), 0))
        idle = idle_cores()
        ends = ending.get()
        idle_during = idle()
    return Forked(max(ends) - start_at, _children_cpu() - cpu, idle_during)


def _run_at(work: Callable[[], Coroutine[Any, Any, object]], start_at: float, loop: str) -> float:
    """One process of `run_forked`: waits for `start_at` (time.time()), runs `work`,
    returns when it ended (time.time())."""
    time.sleep(max(start_at - time.time(), 0))
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(work())
    return time.time()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def shares(count: int, parts: int) -> list[int]:
    """`count` split into `parts` near-equal shares."""
    return [count // parts + (i < count % parts) for i in range(parts)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/<pid>/stat)."""
    # The command name (field 2) may hold spaces: count fields after its closing ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_info(url: str, section: str) -> dict[str, Any]:
    client = SyncRedis.from_url(url)
    try:
        # redis-py types replies as "Awaitable or not"; the sync client's is a dict.
        info: dict[str, Any] = client.info(section)  # type: ignore[assignment]
    finally:
        client.close()
    return info


def redis_commands(url: str) -> int:
    """Commands the Redis at `url` has run so far (INFO commandstats), for per-item figures."""
    stats: dict[str, dict[str, Any]] = _redis_info(url, "commandstats")
    return sum(int(value["calls"]) for value in stats.values())


# INFO cpu's fields for the process and its children (AOF rewrites, snapshots). Not the
# `used_cpu_*_main_thread` pair Valkey 8 adds: the main thread's CPU is already the
# process's, and summing every `used_cpu_*` counted it twice.
_CPU_FIELDS = ("used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children")


def redis_cpu_seconds(url: str) -> float:
    """CPU the Redis at `url` has used so far, its own and its children's (INFO cpu)."""
    info = _redis_info(url, "cpu")
    return sum(float(info.get(key, 0.0)) for key in _CPU_FIELDS)


def redis_stored_bytes(url: str) -> int:
    """Bytes the Redis at `url` holds for what it stores: INFO memory's `used_memory` less
    the clients' and the AOF buffers, which come and go with the traffic (a connection's
    query buffer grows and shrinks 16 KiB at a time), not with the data."""
    info = _redis_info(url, "memory")
    buffers = int(info.get("mem_clients_normal", 0)) + int(info.get("mem_aof_buffer", 0))
    return int(info["used_memory"]) - buffers


async def redis_memory_growth(url: str, upload: Awaitable[T]) -> tuple[T, int]:
    """Awaits `upload` (the caller holds every worker `paused`, so that no item is taken):
    its result and how many bytes `redis_stored_bytes` grew meanwhile. The one way the
    scenarios measure Redis memory per pending item: this growth divided by the items.
    Small runs read high (a fresh Redis's first batch, the keyspace's table doubling):
    compare full runs."""
    before = redis_stored_bytes(url)
    result = await upload
    return result, redis_stored_bytes(url) - before


async def redis_bytes_per_pending_item(
    client: AsyncClient, service: Service, handler: str, items: Iterable[ItemLike],
    count: int, options: Mapping[str, object] | None = None,
) -> float:  # fmt: skip
    """Redis memory per pending item, for a scenario whose own run leaves none pending: an
    upload of `count` items while every worker is paused (`redis_memory_growth`), then
    cancelled, so that none of them ever runs (a cancelled chunk is never claimed)."""
    with paused(service.worker_pids):
        upload = client.upload(handler, items, options=dict(options or {}))
        result, grown = await redis_memory_growth(service.redis_url, upload)
        await client.cancel(result.batch.batch_id)
    return grown / count


def report(figures: dict[str, float], json_path: Path | None) -> None:
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,.3f}")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))


async def upload_and_watch(
    client: AsyncClient, handler: str, items: Iterable[ItemLike],
    count: int, options: Mapping[str, object] | None = None, start_early: bool = False,
) -> tuple[float, float]:  # fmt: skip
    """Uploads a batch and watches it to its terminal snapshot: the seconds that took,
    and the seconds from the upload's answer (the batch committed: nothing runs before,
    unless `start_early`) to that snapshot. Raises unless all `count` items succeeded."""
    started = time.perf_counter()
    result = await client.upload(
        handler,
        items,
        options=dict(options or {}),
        start_early=start_early,
        item_count=count if start_early else None,
    )
    uploaded = time.perf_counter()
    last = None
    async for progress in client.watch(result.batch.batch_id, min_interval=0.1):
        last = progress
    ended = time.perf_counter()
    if last is None or last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    return ended - started, ended - uploaded


@dataclass(frozen=True)
class Measured:
    """One scenario's batch through the service, and the Redis figures beside it."""

    seconds: float  # upload to terminal snapshot
    items_per_second: float
    redis_commands_per_item: float
    redis_bytes_per_pending_item: float
    run_items_per_second: float  # from the upload's answer to the terminal snapshot

    def redis_figures(self) -> dict[str, float]:
        return {
            "redis_commands_per_item": self.redis_commands_per_item,
            "redis_bytes_per_pending_item": self.redis_bytes_per_pending_item,
        }


async def upload_and_measure(
    client: AsyncClient, service: Service, handler: str,
    items: Callable[[], Iterable[ItemLike]], count: int,
    options: Mapping[str, object] | None = None, start_early: bool = False,
    watched: Callable[[], object] | None = None,
) -> Measured:  # fmt: skip
    """`upload_and_watch` of `items()` with Redis commands per item over it (INFO
    commandstats: the upload, the workers, the client's watch and the heartbeats), then
    Redis memory per pending item on a second upload of `items()` that no worker takes
    (`redis_bytes_per_pending_item`). `watched` is called in between: a scenario reads
    its CPU figures there, so that they are of the batch alone."""
    before = redis_commands(service.redis_url)
    seconds, run_seconds = await upload_and_watch(
        client, handler, items(), count, options, start_early
    )
    commands = redis_commands(service.redis_url) - before
    if watched is not None:
        watched()
    pending = await redis_bytes_per_pending_item(client, service, handler, items(), count, options)
    return Measured(seconds, count / seconds, commands / count, pending, count / run_seconds)
