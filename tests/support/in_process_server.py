"""The batchd gRPC server inside the test's own process (support.processes.server is the
subprocess one), and a client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.server.app import BatchdServer, start_server

HOST = "127.0.0.1"
# Tests follow batches closely: WatchProgress floors far below the service's 1 s. Many
# servers run at once: no /metrics listener unless a test asks (metrics_port=0 to
# start_server: any free port).
TEST_WATCH_FLOORS = {"watch_min_interval": 0.01, "watch_min_heartbeat": 0.01, "metrics_port": 0}


@asynccontextmanager
async def running_server(redis_url: str, **settings: Any) -> AsyncIterator[BatchdServer]:
    """A server over `redis_url`, configured by `settings` (Settings fields), on a free
    loopback port; stopped without grace, as no call of a finished test matters."""
    values = {**TEST_WATCH_FLOORS, **settings}
    running = await start_server(Settings(redis_url=redis_url, host=HOST, **values), port=0)
    try:
        yield running
    finally:
        await running.stop(grace=0)


def client_of(server: BatchdServer) -> AsyncClient:
    return AsyncClient(f"{HOST}:{server.port}")
