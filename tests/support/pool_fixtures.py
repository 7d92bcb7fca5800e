"""Fixtures for the tests that run workers as subprocesses beside an in-process server on
a private Redis (tests/flow, tests/faults). A conftest imports `workers`, `server` and
`client` from here and defines what differs: `private_redis`, `worker_env`,
`worker_concurrency` and `server_settings`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchd.client import AsyncClient
from batchd.server.app import BatchdServer
from support.in_process_server import client_of, running_server
from support.processes import ServiceProcess, WorkerPool


@pytest.fixture
def workers(
    private_redis: Any, worker_env: Mapping[str, str], worker_concurrency: int, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts a worker subprocess per call (`workers(concurrency=N)` for another size);
    every one is killed at the end of the test."""
    pool = WorkerPool(private_redis.url, tmp_path, worker_env, concurrency=worker_concurrency)
    yield pool.start
    pool.stop()


@pytest.fixture
async def server(
    private_redis: Any, server_settings: Mapping[str, Any]
) -> AsyncIterator[BatchdServer]:
    async with running_server(private_redis.url, **server_settings) as running:
        yield running


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with client_of(server) as client:
        yield client
