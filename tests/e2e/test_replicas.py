"""Several `batchd-server` replicas on one Redis, as real subprocesses, and one client
that balances over them (`ipv4:` list target, round_robin): submits land on every
server, a watcher survives its server's death, and a server's SIGTERM drains without
one failed call at the client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.net import find_free_port
from support.polling import poll
from support.processes import ServiceProcess, WorkerPool, server
from support.scrape import scrape

from batchd.client import AsyncClient, BatchdError, BatchProgress, BatchState, WatchReconnect

pytestmark = pytest.mark.slow

APPEND = "test.append"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Replica:
    process: ServiceProcess
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handled(self, method: str) -> float:
        """Calls of `method` this server has answered, with any status."""
        found = await scrape(self.metrics_port)
        return found.value("batchd_grpc_server_handled_total", method=method)

    async def watchers(self) -> float:
        return (await scrape(self.metrics_port)).value("batchd_server_watchers_open")


async def serving(address: str) -> None:
    async def probe() -> bool | None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return None
            return True if reply.status == SERVING else None

    await poll(probe, within=30)


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., Any]) -> Any:
    return redis_server_factory()


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    return tmp_path / "applied.log"


@pytest.fixture
async def replicas(private_redis: Any, tmp_path: Path) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for n in range(3):
            port, metrics_port = find_free_port(), find_free_port()
            env = {
                "BATCHD_REDIS_URL": private_redis.url,
                "BATCHD_HOST": "127.0.0.1",
                "BATCHD_PORT": str(port),
                "BATCHD_METRICS_HOST": "127.0.0.1",
                "BATCHD_METRICS_PORT": str(metrics_port),
            }
            process = server(env, tmp_path / f"server-{n}.log").start()
            started.append(Replica(process, port, metrics_port))
        await asyncio.gather(*(serving(r.address) for r in started))
        yield started
    finally:
        for replica in started:
            replica.process.stop()


@pytest.fixture
def workers(private_redis: Any, tmp_path: Path) -> Iterator[WorkerPool]:
    env = {"BATCHD_HANDLERS": "append_handler:handler"}
    pool = WorkerPool(private_redis.url, tmp_path, env, concurrency=10)
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
async def client(replicas: list[Replica], workers: WorkerPool) -> AsyncIterator[AsyncClient]:
    target = "ipv4:" + ",".join(r.address for r in replicas)
    async with AsyncClient(target) as client:

        async def published() -> bool | None:
            return True if any(h.name == APPEND for h in await client.handlers()) else None

        await poll(published, within=30)
        yield client


def items(count: int, effects: Path, ms: float) -> list[tuple[str, dict[str, Any]]]:
    return [(f"i{n}", {"ms": ms, "log": str(effects)}) for n in range(count)]


async def test_submits_are_spread_over_every_server(
    client: AsyncClient, replicas: list[Replica], effects: Path
) -> None:
    before = [await r.handled("SubmitBatch") for r in replicas]
    for n in range(30):
        await client.submit(APPEND, items(1, effects, 0), request_id=f"spread-{n}")
    after = [await r.handled("SubmitBatch") for r in replicas]
    per_server = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(per_server) == 30
    assert all(count >= 5 for count in per_server), per_server


async def holding_watch(replicas: list[Replica]) -> Replica:
    """The server that holds the one open WatchProgress stream."""

    async def probe() -> Replica | None:
        for replica in replicas:
            if replica.process.running() and await replica.watchers() > 0:
                return replica
        return None

    return await poll(probe)


class Traffic:
    """Submits (each with a request_id) and GetBatch calls, made in loops until stopped;
    every call that failed is kept."""

    def __init__(self, client: AsyncClient, effects: Path, batch_id: str) -> None:
        self.client = client
        self.effects = effects
        self.batch_id = batch_id
        self.calls = 0
        self.failures: list[tuple[str, BatchdError]] = []
        self._stopping = asyncio.Event()
        self._ids = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        loops = [self._submit, self._get] * 3
        self._tasks = [asyncio.create_task(self._loop(call)) for call in loops]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self, call: Callable[[], Awaitable[object]]) -> None:
        while not self._stopping.is_set():
            try:
                await call()
            except BatchdError as exc:
                self.failures.append((call.__name__, exc))
            self.calls += 1
            await asyncio.sleep(0.001)

    async def _submit(self) -> None:
        n = next(self._ids)
        await self.client.submit(APPEND, items(1, self.effects, 0), request_id=f"steady-{n}")

    async def _get(self) -> None:
        await self.client.get(self.batch_id)

    async def more_calls(self, count: int) -> None:
        """Returns once `count` more calls have been made."""
        target = self.calls + count

        async def made() -> bool | None:
            return True if self.calls >= target else None

        await poll(made)


async def watch_through(
    client: AsyncClient,
    batch_id: str,
    replicas: list[Replica],
    traffic: Traffic,
    fault: Callable[[ServiceProcess], object],
) -> tuple[list[BatchProgress], list[WatchReconnect]]:
    """Watches the batch to its end; at the first snapshot, applies `fault` to the server
    holding the watch, then lets the traffic go on for a while on the others."""
    lost: list[WatchReconnect] = []
    seen: list[BatchProgress] = []
    async for progress in client.watch(batch_id, min_interval=0.05, on_reconnect=lost.append):
        seen.append(progress)
        if len(seen) == 1:
            holder = await holding_watch(replicas)
            await asyncio.to_thread(fault, holder.process)
            await traffic.more_calls(100)
    return seen, lost


async def test_a_watch_resumes_on_another_server_when_its_server_dies(
    client: AsyncClient, replicas: list[Replica], effects: Path
) -> None:
    submitted = await client.submit(
        APPEND, items(400, effects, 50), options={"chunk_size": 10}, request_id="watched"
    )
    batch_id = submitted.batch.batch_id
    async with Traffic(client, effects, batch_id) as traffic:
        seen, lost = await watch_through(client, batch_id, replicas, traffic, ServiceProcess.kill)
    assert lost, "the watch never lost its stream"
    assert seen[-1].state == BatchState.COMPLETED
    assert seen[-1].counts.succeeded == 400
    finished = [p.counts.finished for p in seen]
    assert finished == sorted(finished)
    # Reads are repeated by the channel, submits with a request_id by the client.
    assert traffic.failures == []


async def test_a_sigterm_drains_without_a_failed_call(
    client: AsyncClient, replicas: list[Replica], effects: Path
) -> None:
    submitted = await client.submit(
        APPEND, items(400, effects, 50), options={"chunk_size": 10}, request_id="drained"
    )
    batch_id = submitted.batch.batch_id
    statuses: list[int] = []
    async with Traffic(client, effects, batch_id) as traffic:
        seen, lost = await watch_through(
            client, batch_id, replicas, traffic, lambda p: statuses.append(p.terminate())
        )
    assert statuses == [0]
    assert traffic.failures == []
    assert lost, "the watch never moved"
    assert all(r.error.code == grpc.StatusCode.UNAVAILABLE for r in lost)
    assert seen[-1].state == BatchState.COMPLETED
    assert seen[-1].counts.succeeded == 400
