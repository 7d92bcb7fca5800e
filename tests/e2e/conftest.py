"""The whole service for end-to-end tests: a real gRPC server on a free port, a real ARQ
worker (in-process, polling the private Redis) and a real local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from support.http_peer import serving

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.server.app import BatchdServer, start_server
from batchd.worker.app import build_worker


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    # A key prefix of their own keeps these batches apart from other tests' queues.
    return Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        worker_concurrency=200,
        key_prefix="e2e:",
        egress_allow="127.0.0.1",  # the local HTTP peers
        watch_min_interval=0.01,  # tests follow batches closely
        watch_min_heartbeat=0.01,
    )


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[BatchdServer]:
    running = await start_server(settings, port=0, metrics_port=0)
    yield running
    await running.stop(grace=0)


@pytest.fixture(scope="session")
async def worker(settings: Settings) -> AsyncIterator[None]:
    worker = build_worker(settings, poll_delay=0.02)
    task = asyncio.create_task(worker.async_run())
    await worker.started.wait()  # the catalog is published: submits can be validated
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.close()


@pytest.fixture(scope="session")
async def client(server: BatchdServer, worker: None) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        yield client


# /broken/<n> answers 422 until a test "fixes" the peer by emptying this set.
BROKEN: set[str] = set()


@pytest.fixture(scope="session")
async def http_base() -> AsyncIterator[str]:
    """A local HTTP peer: /ok/<n> answers 200 with JSON, /missing/<n> answers 404 and
    /broken/<n> answers 422 while <n> is in BROKEN."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"n": request.match_info["n"], "method": request.method})

    async def broken(request: web.Request) -> web.Response:
        if request.match_info["n"] in BROKEN:
            return web.json_response({"error": "bad record"}, status=422)
        return await ok(request)

    app = web.Application()
    app.router.add_route("*", "/ok/{n}", ok)
    app.router.add_route("*", "/broken/{n}", broken)
    async with serving(app) as base:
        yield base
