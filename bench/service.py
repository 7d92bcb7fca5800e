"""What every benchmark scenario shares: the service in subprocesses on a private Redis,
the wait for its workers, and the printed and JSON figures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batchd.client import AsyncClient
from batchd.core.embedded_redis import EmbeddedRedis, free_port


@dataclass(frozen=True)
class Service:
    port: int
    redis_url: str
    server_pid: int
    worker_pid: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def running_service() -> Iterator[Service]:
    """A private Valkey (AOF on, as the embedded default), `batchd-server` and one
    `batchd-worker`, stopped (SIGTERM) at the end."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        port = free_port()
        env = dict(os.environ, BATCHD_REDIS_URL=redis.url, BATCHD_PORT=str(port),
                   BATCHD_HOST="127.0.0.1", BATCHD_LOG_LEVEL="warning")  # fmt: skip
        bin_dir = Path(sys.executable).parent
        server = subprocess.Popen([bin_dir / "batchd-server"], env=env)
        worker = subprocess.Popen([bin_dir / "batchd-worker"], env=env)
        try:
            yield Service(port, redis.url, server.pid, worker.pid)
        finally:
            for process in (server, worker):
                process.terminate()
                process.wait(30)


async def wait_for_handler(client: AsyncClient, name: str) -> None:
    """The worker publishes its catalog at start-up, in another process: poll for it."""
    while not await _serves(client, name):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _serves(client: AsyncClient, name: str) -> bool:
    try:
        return any(h.name == name and h.live_workers for h in await client.handlers())
    except Exception:  # the server may not listen yet
        return False


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(figures: dict[str, float], json_path: Path | None) -> None:
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,.3f}")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))
