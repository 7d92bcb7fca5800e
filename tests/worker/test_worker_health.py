"""A worker's /healthz and /readyz on its HTTP listener: 200 while the poll loop goes
round and the worker serves, 503 with the reason otherwise; `batchd-health --url`
reads them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.in_process_worker import running_worker

from batchd.core.config import Settings
from batchd.server.probe import check_http
from batchd.worker.app import BatchdWorker
from batchd.worker.health import LOOP_STALL, WorkerHealth


@contextlib.asynccontextmanager
async def worker_with_health(redis_url: str) -> AsyncIterator[BatchdWorker]:
    settings = Settings(redis_url=redis_url, key_prefix=f"wh{uuid.uuid4().hex[:10]}:")
    async with running_worker(settings, poll_delay=0.01, metrics_port=0) as worker:
        yield worker


async def get(port: int | None, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_a_running_worker_is_live_and_ready(redis_url: str) -> None:
    async with worker_with_health(redis_url) as worker:
        assert await get(worker.metrics_port, "/healthz") == (200, "ok\n")
        assert await get(worker.metrics_port, "/readyz") == (200, "ok\n")
        url = f"http://127.0.0.1:{worker.metrics_port}/healthz"
        assert await asyncio.to_thread(check_http, url) is None


async def test_a_draining_worker_is_live_but_not_ready(redis_url: str) -> None:
    async with worker_with_health(redis_url) as worker:
        worker.handle_sig_wait_for_completion(signal.SIGTERM)  # what SIGTERM does
        assert await get(worker.metrics_port, "/readyz") == (503, "draining\n")
        assert (await get(worker.metrics_port, "/healthz"))[0] == 200
        url = f"http://127.0.0.1:{worker.metrics_port}/readyz"
        assert await asyncio.to_thread(check_http, url) == f"{url}: 503 draining"


def test_a_poll_loop_without_a_pass_for_too_long_is_not_live() -> None:
    now = [1000.0]
    started = asyncio.Event()
    started.set()
    health = WorkerHealth(lambda: 1000.0, started, asyncio.Event(), clock=lambda: now[0])
    assert health.liveness_problem() is None
    now[0] += LOOP_STALL
    assert health.liveness_problem() is None
    now[0] += 1
    assert health.liveness_problem() == "the poll loop has not ended a pass for 61 s"


def test_a_worker_still_starting_is_not_ready() -> None:
    health = WorkerHealth(lambda: 0.0, asyncio.Event(), asyncio.Event(), clock=lambda: 0.0)
    assert health.readiness_problem() == "starting"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/healthz", "127.0.0.1:9465/healthz"])
def test_only_http_urls_are_checked(url: str) -> None:
    assert check_http(url) == f"{url}: not an http(s) URL"
