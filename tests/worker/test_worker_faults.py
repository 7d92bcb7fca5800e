"""Workers that die or lose Redis mid-batch: real `batchd-worker` processes, a private
Redis per test, and a handler (`append_handler.py`, loaded by import path) that appends
each application of an item to a file, so that reruns show.

These tests poll Redis and the file with a deadline: the state is another process's, and
there is nothing to subscribe to.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from support.faults import applied
from support.polling import poll
from support.processes import ServiceProcess, worker
from support.redis_server import RedisServer, RedisServerFactory

from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemState,
    ItemView,
    NewItem,
)
from batchd.core.keys import Keys
from batchd.core.store import BatchStore

HANDLER = "test.append"
LEASE_TTL = 2.0
MAINTENANCE_INTERVAL = 0.5


class Scene:
    """A private Redis, its store under a fresh prefix, and the workers of one test."""

    def __init__(self, server: RedisServer, tmp_path: Path) -> None:
        self.server = server
        self.url = server.url
        self.tmp_path = tmp_path
        self.prefix = f"wf{uuid.uuid4().hex[:8]}:"
        self.redis = Redis.from_url(server.url)
        self.store = BatchStore(self.redis, Keys(self.prefix))
        self.effects = tmp_path / "effects.log"
        self.workers: list[ServiceProcess] = []

    def start_worker(self, **settings: Any) -> ServiceProcess:
        values = {
            "redis_url": self.url,
            "key_prefix": self.prefix,
            "worker_concurrency": 2,
            "worker_max_chunks": 1,
            "worker_poll_interval": 0.02,
            "heartbeat_interval": 0.5,
            **settings,
        }
        env = {
            "BATCHD_HANDLERS": "append_handler:handler",
            **{f"BATCHD_{name.upper()}": str(value) for name, value in values.items()},
        }
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        process = worker(env, log_path).start()
        self.workers.append(process)
        return process

    async def serving(self, workers: int) -> None:
        async def enough() -> bool | None:
            statuses = await self.store.list_handlers(10.0)
            live = next((s.live_workers for s in statuses if s.spec.name == HANDLER), 0)
            return True if live >= workers else None

        await poll(enough, within=30)

    async def submit(self, count: int, *, ms: float, chunk_size: int) -> str:
        batch_id = f"b{uuid.uuid4().hex[:12]}"
        spec = BatchSpec(batch_id, HANDLER, BatchOptions(chunk_size=chunk_size), {})
        session = await self.store.begin_upload(spec)
        params = json.dumps({"ms": ms, "log": str(self.effects)}).encode()
        await session.add_items(NewItem(f"i{n}", params) for n in range(count))
        await session.commit()
        return batch_id

    async def succeeded_at_least(self, batch_id: str, count: int) -> BatchRecord | None:
        batch = await self.store.get_batch(batch_id)
        return batch if batch.counts.succeeded >= count else None

    async def finished(self, batch_id: str) -> BatchRecord | None:
        batch = await self.store.get_batch(batch_id)
        return batch if batch.state.is_terminal else None

    async def items(self, batch_id: str) -> list[ItemView]:
        items, cursor = await self.store.list_items(batch_id, 1000, "", [])
        while cursor:
            page, cursor = await self.store.list_items(batch_id, 1000, cursor, [])
            items += page
        return items

    async def close(self) -> None:
        for process in self.workers:
            process.stop()
        await self.redis.aclose()


@pytest.fixture
async def scene(redis_server_factory: RedisServerFactory, tmp_path: Path) -> AsyncIterator[Scene]:
    # With its append-only file, the data survives stop() and start().
    scene = Scene(redis_server_factory(appendonly=True), tmp_path)
    yield scene
    await scene.close()


@pytest.mark.chaos
@pytest.mark.slow
async def test_a_killed_workers_chunk_is_taken_over_and_finished(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {"lease_ttl": LEASE_TTL, "maintenance_interval": MAINTENANCE_INTERVAL}
    workers = [scene.start_worker(**settings), scene.start_worker(**settings)]
    await scene.serving(2)
    batch_id = await scene.submit(60, ms=40, chunk_size=60)  # one chunk: one worker runs it
    await poll(lambda: scene.succeeded_at_least(batch_id, 10), within=30)

    holder_pid = applied(scene.effects)[0][1]
    holder = next(w for w in workers if w.pid == holder_pid)
    survivor = next(w for w in workers if w.pid != holder_pid)
    holder.kill()
    killed_at = time.monotonic()
    recorded = {i.custom_id for i in await scene.items(batch_id) if i.state.is_terminal}

    async def resumed() -> float | None:
        if any(pid == survivor.pid for _, pid in applied(scene.effects)):
            return time.monotonic() - killed_at
        return None

    resume_delay = await poll(resumed, within=LEASE_TTL + MAINTENANCE_INTERVAL + 10)
    batch = await poll(lambda: scene.finished(batch_id), within=60)

    times_applied = Counter(key for key, _ in applied(scene.effects))
    duplicates = sorted(key for key, n in times_applied.items() if n > 1)
    with capsys.disabled():
        print(
            f"\n[kill] recorded before the kill: {len(recorded)}; chunk resumed "
            f"{resume_delay:.2f}s after the kill (lease_ttl {LEASE_TTL}, maintenance "
            f"{MAINTENANCE_INTERVAL}); items applied twice: {len(duplicates)} {duplicates}"
        )
    assert resume_delay <= LEASE_TTL + MAINTENANCE_INTERVAL + 1.0
    assert (batch.state, batch.counts.succeeded) == (BatchState.COMPLETED, 60)
    assert batch.counts.total == batch.total_items
    items = await scene.items(batch_id)
    assert {i.state for i in items} == {ItemState.SUCCEEDED}  # each terminal, once
    assert set(times_applied) == {f"{batch_id}/i{n}" for n in range(60)}
    # What was recorded before the kill never ran again; only items in flight, or done
    # but not yet flushed, at the kill may have (at least once, not exactly once).
    assert not {f"{batch_id}/{custom_id}" for custom_id in recorded} & set(duplicates)
    assert len(duplicates) <= 2 + 2  # concurrency, plus a flush interval's worth
    assert survivor.running()


@pytest.mark.chaos
@pytest.mark.slow
async def test_a_worker_rides_out_a_redis_outage(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    # A lease longer than the outage: the chunks in hand stay this worker's throughout.
    # Fewer chunks than job slots: ARQ keeps polling the queue through the outage.
    worker = scene.start_worker(worker_concurrency=4, lease_ttl=10.0, worker_max_chunks=8)
    await scene.serving(1)
    batch_id = await scene.submit(300, ms=40, chunk_size=100)
    await poll(lambda: scene.succeeded_at_least(batch_id, 40), within=30)

    scene.server.stop()
    stopped_at = time.monotonic()
    await asyncio.sleep(3.0)  # the outage itself
    assert worker.running()
    scene.server.start()
    outage = time.monotonic() - stopped_at

    batch = await poll(lambda: scene.finished(batch_id), within=60)
    assert worker.running()
    # Waiting for the exit blocks: in a thread, so that this loop stays free.
    assert await asyncio.to_thread(worker.terminate, 40) == 0

    times_applied = Counter(key for key, _ in applied(scene.effects))
    duplicates = sorted(key for key, n in times_applied.items() if n > 1)
    with capsys.disabled():
        print(f"\n[outage] Redis down {outage:.2f}s; items applied twice: {len(duplicates)}")
    assert (batch.state, batch.counts.succeeded) == (BatchState.COMPLETED, 300)
    assert batch.counts.total == batch.total_items
    assert {i.state for i in await scene.items(batch_id)} == {ItemState.SUCCEEDED}
    assert set(times_applied) == {f"{batch_id}/i{n}" for n in range(300)}
    assert not duplicates
    events = worker.events()
    # The outcome flushes met the outage and saw its end, and no loop died of it. (The
    # queue poll, heartbeat and lease renewer run on timers of their own: whether one of
    # their rounds fell inside the outage, or after it before the batch ended, is timing.)
    troubled = {e["during"] for e in events if e["event"] == "redis_unavailable"}
    recovered = {e["during"] for e in events if e["event"] == "redis_available_again"}
    assert "outcome_flush" in troubled
    assert "outcome_flush" in recovered
    assert recovered <= troubled
    assert events[-1]["event"] == "worker_stopped"
