"""Fixtures for fault-injection tests: a private Redis each test may kill, a server, and
worker subprocesses loading the chaos handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.in_process_server import client_of, running_server
from support.processes import ServiceProcess, WorkerPool

from batchd.client import AsyncClient
from batchd.server.app import BatchdServer

# Short leases and sweeps so that a killed worker's chunk is picked up within seconds.
FAST_RECOVERY = {"BATCHD_LEASE_TTL": "2", "BATCHD_MAINTENANCE_INTERVAL": "0.5"}


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., object]) -> object:
    return redis_server_factory(appendonly=True, extra_args=["--appendfsync", "everysec"])


@pytest.fixture
def chaos_log(tmp_path: Path) -> Path:
    return tmp_path / "applied.log"


@pytest.fixture
def workers(
    private_redis: object, chaos_log: Path, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    pool = WorkerPool(
        private_redis.url,  # type: ignore[attr-defined]
        tmp_path,
        {
            "BATCHD_HANDLERS": "chaos_handlers:handlers",
            "BATCHD_CHAOS_LOG": str(chaos_log),
            **FAST_RECOVERY,
        },
    )
    yield pool.start
    pool.stop()


@pytest.fixture
async def server(private_redis: object) -> AsyncIterator[BatchdServer]:
    async with running_server(
        private_redis.url,  # type: ignore[attr-defined]
        lease_ttl=2,
        maintenance_interval=0.5,
    ) as running:
        yield running


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with client_of(server) as client:
        yield client
