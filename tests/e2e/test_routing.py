"""Routing by handler, with worker subprocesses that serve different handlers: a chunk is
only ever taken by a worker that serves its handler, and a batch that no live worker
can run waits QUEUED, saying why, until one comes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.in_process_server import HOST, client_of, running_server
from support.polling import poll
from support.processes import ServiceProcess, WorkerPool

from batchd.client import AsyncClient, BatchState, ItemState
from batchd.server.app import BatchdServer

APPEND = "test.append"
NOT_SERVED = f'no live worker serves handler "{APPEND}"'


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., Any]) -> Any:
    return redis_server_factory()


@pytest.fixture
def pool(private_redis: Any, tmp_path: Path) -> Iterator[WorkerPool]:
    # Fast heartbeats: a stopped worker's absence and a new one's presence show within
    # about a second. Chunk events are logged at debug.
    env = {
        "BATCHD_HEARTBEAT_INTERVAL": "0.2",
        "BATCHD_WORKER_TTL": "1",
        "BATCHD_LOG_LEVEL": "debug",
    }
    workers = WorkerPool(private_redis.url, tmp_path, env, concurrency=20)
    yield workers
    workers.stop()


@pytest.fixture
async def server(private_redis: Any) -> AsyncIterator[BatchdServer]:
    async with running_server(private_redis.url, worker_ttl=1.0) as running:
        yield running


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with client_of(server) as client:
        yield client


def start(pool: WorkerPool, *, append: bool) -> ServiceProcess:
    pool.env["BATCHD_HANDLERS"] = "append_handler:handler" if append else ""
    return pool.start()


async def live(client: AsyncClient, handler: str, count: int) -> None:
    async def seen() -> bool | None:
        found = {h.name: h.live_workers for h in await client.handlers()}
        return True if found.get(handler, 0) == count else None

    await poll(seen)


def appended(log: Path) -> list[tuple[str, int]]:
    """(idempotency key, pid) of every item effect applied."""
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(key, int(pid)) for key, pid in (line.split() for line in lines)]


def chunk_events(process: ServiceProcess, batch_id: str) -> list[str]:
    return [
        e["event"]
        for e in process.events()
        if e.get("batch_id") == batch_id and str(e.get("event", "")).startswith("chunk_")
    ]


@pytest.mark.slow
async def test_a_mixed_pool_runs_each_chunk_on_a_worker_that_serves_it(
    client: AsyncClient, pool: WorkerPool, tmp_path: Path
) -> None:
    serving = start(pool, append=True)
    other = start(pool, append=False)
    await live(client, APPEND, 1)
    await live(client, "noop", 2)
    log = tmp_path / "applied.log"
    items = [(f"i{n}", {"log": str(log)}) for n in range(1000)]
    batch = (await client.upload(APPEND, items, options={"chunk_size": 10})).batch
    noop = (await client.upload("noop", [(f"n{n}", {}) for n in range(1000)])).batch

    async for progress in client.watch(batch.batch_id):
        if progress.state.is_terminal:
            break
    assert progress.state == BatchState.COMPLETED
    assert progress.counts.succeeded == 1000
    # Every effect applied once, by the worker that serves the handler; the other never
    # touched a chunk of the batch (it used to take the jobs and defer them, again and
    # again), while it did run its share of the built-in handler's batch.
    effects = appended(log)
    assert len(effects) == len({key for key, _ in effects}) == 1000
    assert {pid for _, pid in effects} == {serving.pid}
    assert "chunk_done" in chunk_events(serving, batch.batch_id)
    assert chunk_events(other, batch.batch_id) == []
    async for progress in client.watch(noop.batch_id):
        if progress.state.is_terminal:
            break
    assert progress.counts.succeeded == 1000
    assert other.running()


@pytest.mark.slow
async def test_a_batch_no_live_worker_serves_waits_and_starts_when_one_comes(
    client: AsyncClient, server: BatchdServer, pool: WorkerPool, tmp_path: Path
) -> None:
    first = start(pool, append=True)  # publishes the handler's schema, then goes
    await live(client, APPEND, 1)
    assert first.terminate() == 0
    await live(client, APPEND, 0)
    other = start(pool, append=False)  # a live worker, of other handlers
    await live(client, "noop", 1)

    log = tmp_path / "applied.log"
    items = [(f"i{n}", {"log": str(log)}) for n in range(50)]
    batch = (await client.upload(APPEND, items, options={"chunk_size": 10})).batch
    waiting = await client.get(batch.batch_id)
    assert waiting.state == BatchState.QUEUED
    assert waiting.waiting_reason == NOT_SERVED
    watch = client.watch(batch.batch_id)
    snapshot = await anext(watch)
    assert (snapshot.state, snapshot.waiting_reason) == (BatchState.QUEUED, NOT_SERVED)
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchd.cli.main", "get", batch.batch_id,
        env={**os.environ, "BATCHD_TARGET": f"{HOST}:{server.port}"},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await shown.communicate()
    assert shown.returncode == 0
    assert f"waiting     {NOT_SERVED}" in out.decode()

    # A batch of a served handler, submitted after it, runs to the end meanwhile: the
    # waiting batch is not failed, not started, and nothing of it is lost.
    noop = (await client.upload("noop", [("n", {})])).batch
    async for progress in client.watch(noop.batch_id):
        if progress.state.is_terminal:
            break
    still = await client.get(batch.batch_id)
    assert (still.state, still.counts.pending) == (BatchState.QUEUED, 50)
    assert chunk_events(other, batch.batch_id) == []

    # One whose completion window closes first ends with its items EXPIRED, as any late
    # item does.
    late = await client.upload(APPEND, items[:5], options={"completion_window": 1})
    async for progress in client.watch(late.batch.batch_id):
        if progress.state.is_terminal:
            break
    assert (progress.state, progress.counts.expired) == (BatchState.COMPLETED, 5)

    came = time.time()
    serving = start(pool, append=True)
    async for snapshot in watch:
        if snapshot.state.is_terminal:
            break
    assert snapshot.state == BatchState.COMPLETED
    assert snapshot.waiting_reason == ""
    assert snapshot.counts.succeeded == 50
    assert {pid for _, pid in appended(log)} == {serving.pid}
    assert len(appended(log)) == 50
    started = (await client.get(batch.batch_id)).start_time
    assert started is not None
    print(f"\nwaiting batch started {started.timestamp() - came:.2f}s after its worker was started")
    outcomes = [item async for item in client.items(batch.batch_id)]
    assert {item.state for item in outcomes} == {ItemState.SUCCEEDED}
