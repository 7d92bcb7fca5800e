"""Fixtures for flow-control tests: a private Redis (so INFO commandstats counts only
this test), a server, and worker subprocesses loading tests/support/flow_handlers.py
(and the built-in http.request)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.processes import ServiceProcess, WorkerPool

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.server.app import BatchdServer, start_server


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., object]) -> object:
    return redis_server_factory()


@pytest.fixture
def flow_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


@pytest.fixture
def workers(
    private_redis: object, flow_log: Path, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    pool = WorkerPool(
        private_redis.url,  # type: ignore[attr-defined]
        tmp_path,
        {
            "BATCHD_HANDLERS": "flow_handlers:handlers",
            "BATCHD_FLOW_LOG": str(flow_log),
            "BATCHD_LOG_LEVEL": "info",
        },
        concurrency=20,
    )
    yield pool.start
    pool.stop()


@pytest.fixture
async def server(private_redis: object) -> AsyncIterator[BatchdServer]:
    settings = Settings(redis_url=private_redis.url, host="127.0.0.1")  # type: ignore[attr-defined]
    running = await start_server(settings, port=0)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        yield client
