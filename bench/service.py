"""What every benchmark scenario shares: the service in subprocesses on a private Redis,
the wait for its workers, and the printed and JSON figures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from batchd.client import AsyncClient, BatchState
from batchd.core.embedded_redis import EmbeddedRedis, free_port


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
def running_service(workers: int = 1, env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """A private Valkey (AOF on, as the embedded default), `batchd-server` and `workers`
    `batchd-worker` processes (with `env` added to their BATCHD_* settings), stopped
    (SIGTERM) at the end."""
    if workers < 1:
        raise ValueError("a service needs at least one worker to publish its handlers")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        port = free_port()
        full_env = dict(os.environ, BATCHD_REDIS_URL=redis.url, BATCHD_PORT=str(port),
                        BATCHD_HOST="127.0.0.1", BATCHD_LOG_LEVEL="warning")  # fmt: skip
        full_env.update(env or {})
        bin_dir = Path(sys.executable).parent
        server = subprocess.Popen([bin_dir / "batchd-server"], env=full_env)
        pool = [subprocess.Popen([bin_dir / "batchd-worker"], env=full_env) for _ in range(workers)]
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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/<pid>/stat)."""
    # The command name (field 2) may hold spaces: count fields after its closing ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_commands(url: str) -> int:
    """Commands the Redis at `url` has run so far (INFO commandstats), for per-item figures."""
    client = SyncRedis.from_url(url)
    try:
        # redis-py types replies as "Awaitable or not"; the sync client's is a dict.
        stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]
    finally:
        client.close()
    return sum(int(value["calls"]) for value in stats.values())


def report(figures: dict[str, float], json_path: Path | None) -> None:
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,.3f}")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))


async def upload_and_watch(
    client: AsyncClient, handler: str, items: Iterable[tuple[str, dict[str, object]]],
    count: int, options: Mapping[str, object] | None = None,
) -> float:  # fmt: skip
    """Uploads a batch and watches it to its terminal snapshot: the seconds it took.
    Raises unless all `count` items succeeded."""
    started = time.perf_counter()
    result = await client.upload(handler, items, options=dict(options or {}))
    last = None
    async for progress in client.watch(result.batch.batch_id, min_interval=0.1):
        last = progress
    elapsed = time.perf_counter() - started
    if last is None or last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    return elapsed
