"""The dashboard over a real server and worker on the session's private Valkey (a key
prefix of their own), served by the server's HTTP listener on a free port; and the same
with API keys (`secured`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from redis.asyncio import Redis
from support.dashboard import HOST, dashboard_url, failing_handler
from support.in_process_server import TEST_WATCH_FLOORS

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer, start_server
from batchd.worker.app import build_worker

PREFIX = "dash:"


@pytest.fixture(scope="module")
def settings(redis_url: str) -> Settings:
    return Settings.of(
        redis_url=redis_url,
        host=HOST,
        key_prefix=PREFIX,
        worker_concurrency=20,
        **TEST_WATCH_FLOORS,
    )


@pytest.fixture(scope="module")
async def worker(settings: Settings) -> AsyncIterator[None]:
    worker = build_worker(settings, poll_delay=0.02, extra_handlers=[failing_handler()])
    task = asyncio.create_task(worker.async_run())
    await worker.started.wait()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.close()


@pytest.fixture(scope="module")
async def server(settings: Settings, worker: None) -> AsyncIterator[BatchdServer]:
    running = await start_server(settings, port=0, metrics_port=0)
    yield running
    await running.stop(grace=0)


@pytest.fixture(scope="module")
def dashboard(server: BatchdServer) -> str:
    """The dashboard's URL (…/dashboard/), authentication off."""
    return dashboard_url(server)


@pytest.fixture(scope="module")
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"{HOST}:{server.port}") as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client keeping cookies, as a browser does (loopback IP included)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture(scope="module")
async def secured(settings: Settings, worker: None) -> AsyncIterator[BatchdServer]:
    """A server taking API keys, caching a verified key for a tenth of a second."""
    running = await start_server(
        replace(settings, auth="tokens", auth_cache_seconds=0.1), port=0, metrics_port=0
    )
    yield running
    await running.stop(grace=0)


@pytest.fixture(scope="module")
def secured_dashboard(secured: BatchdServer) -> str:
    return dashboard_url(secured)


@pytest.fixture(scope="module")
async def credentials(redis_url: str) -> AsyncIterator[CredentialStore]:
    redis = Redis.from_url(redis_url)
    yield CredentialStore(redis, Keys(PREFIX))
    await redis.aclose()
