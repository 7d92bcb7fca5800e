"""Fixtures for flow-control tests: a private Redis (so INFO commandstats counts only
this test), a server, and worker subprocesses loading tests/support/flow_handlers.py
(and the built-in http.request)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.in_process_server import client_of, running_server
from support.processes import ServiceProcess, WorkerPool

from batchd.client import AsyncClient
from batchd.server.app import BatchdServer


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
            "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # http.request items call a local peer
        },
        concurrency=20,
    )
    yield pool.start
    pool.stop()


@pytest.fixture
async def server(private_redis: object) -> AsyncIterator[BatchdServer]:
    async with running_server(private_redis.url) as running:  # type: ignore[attr-defined]
        yield running


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with client_of(server) as client:
        yield client
