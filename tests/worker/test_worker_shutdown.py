"""Stopping a worker mid-chunk: what is done stays recorded, the rest is handed back (its
items pending again, a fresh job queued for them) and runs elsewhere at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler, ItemContext


def _settings(redis_url: str, **overrides: Any) -> Settings:
    prefix = f"ws{uuid.uuid4().hex[:10]}:"
    return Settings(redis_url=redis_url, key_prefix=prefix, **overrides)


async def _submit(store: BatchStore, handler: str, params: list[dict[str, Any]]) -> str:
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    spec = BatchSpec(batch_id, handler, BatchOptions(chunk_size=100), {})
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", json.dumps(p).encode()) for n, p in enumerate(params))
    await session.commit()
    return batch_id


async def _burst(settings: Settings, handlers: list[Handler]) -> None:
    worker = build_worker(settings, burst=True, extra_handlers=handlers, poll_delay=0.01)
    try:
        await worker.async_run()
    finally:
        await worker.close()


class Gate:
    """A handler whose items wait for `open`; counts calls per item."""

    def __init__(self, *, waiting: int, free: frozenset[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.free = free
        self.open = asyncio.Event()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expected_waiting = waiting

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.calls.append(ctx.custom_id)
        if ctx.custom_id not in self.free:
            self.waiting += 1
            if self.waiting == self.expected_waiting:
                self.all_waiting.set()
            await self.open.wait()
        return {}

    def handler(self) -> Handler:
        return Handler(name="test.gate", run=self.run)


async def test_a_draining_worker_finishes_items_in_flight_and_hands_back_the_rest(
    redis: Redis, redis_url: str
) -> None:
    settings = _settings(redis_url, worker_concurrency=2)
    store = BatchStore(redis, Keys(settings.key_prefix))
    gate = Gate(waiting=2)
    batch_id = await _submit(store, "test.gate", [{}] * 10)
    worker = build_worker(settings, extra_handlers=[gate.handler()], poll_delay=0.01)
    running = asyncio.create_task(worker.async_run())
    try:
        await gate.all_waiting.wait()
        worker.handle_sig_wait_for_completion(signal.SIGTERM)  # what SIGTERM does
        gate.open.set()
        with pytest.raises(asyncio.CancelledError):
            await running  # arq ends its main task once the jobs in hand are done
    finally:
        await worker.close()
    assert gate.calls == ["i0", "i1"]
    batch = await store.get_batch(batch_id)
    assert (batch.state, batch.counts.succeeded, batch.counts.pending) == (
        BatchState.RUNNING,
        2,
        8,
    )
    assert batch.counts.running == batch.counts.claimed == 0
    assert (
        await redis.zcard(Keys(settings.key_prefix).queue("test.gate")) == 1
    )  # a job for the rest

    await _burst(settings, [gate.handler()])
    batch = await store.get_batch(batch_id)
    assert (batch.state, batch.counts.succeeded) == (BatchState.COMPLETED, 10)
    assert sorted(gate.calls) == sorted(f"i{n}" for n in range(10))  # nothing ran twice


async def test_a_cancelled_chunk_job_keeps_what_it_recorded(redis: Redis, redis_url: str) -> None:
    # close() without a grace period cancels the jobs in hand; ARQ queues them again.
    settings = _settings(redis_url, worker_concurrency=2, outcome_flush_items=1)
    store = BatchStore(redis, Keys(settings.key_prefix))
    gate = Gate(waiting=2, free=frozenset({"i0", "i1"}))
    batch_id = await _submit(store, "test.gate", [{}] * 10)
    worker = build_worker(settings, extra_handlers=[gate.handler()], poll_delay=0.01)
    running = asyncio.create_task(worker.async_run())
    try:
        await gate.all_waiting.wait()  # i0 and i1 are done, i2 and i3 are stuck
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await worker.close()
    batch = await store.get_batch(batch_id)
    # The chunk was handed back, the two items cut short in flight with the rest.
    assert (batch.counts.succeeded, batch.counts.pending, batch.counts.running) == (2, 8, 0)

    gate.open.set()
    await _burst(settings, [gate.handler()])
    batch = await store.get_batch(batch_id)
    assert (batch.state, batch.counts.succeeded) == (BatchState.COMPLETED, 10)
    # At least once: the two items interrupted in flight ran again; nothing else did.
    assert sorted(gate.calls) == sorted([f"i{n}" for n in range(10)] + ["i2", "i3"])


@pytest.mark.slow
async def test_batchd_worker_stops_gracefully_on_sigterm(redis: Redis, redis_url: str) -> None:
    settings = _settings(redis_url, worker_concurrency=2)
    store = BatchStore(redis, Keys(settings.key_prefix))
    batch_id = await _submit(store, "sleep", [{"seconds": 1.0}] * 10)
    env = {
        **os.environ,
        "BATCHD_REDIS_URL": redis_url,
        "BATCHD_KEY_PREFIX": settings.key_prefix,
        "BATCHD_WORKER_CONCURRENCY": "2",
        "BATCHD_LOG_FORMAT": "json",
        "BATCHD_LOG_LEVEL": "debug",  # chunk events are at debug
        # Renewals every third of a second report the items in flight (`running`).
        "BATCHD_LEASE_TTL": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchd.worker.main",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    events: list[str] = []
    try:
        while "chunk_claimed" not in events:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "the worker exited before starting the chunk"
            if line.startswith(b"{"):
                events.append(json.loads(line)["event"])

        async def both_slots_busy() -> bool | None:
            return (await store.get_batch(batch_id)).counts.running == 2 or None

        await poll(both_slots_busy)  # the claim is logged before its items start
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 30)
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    events += [json.loads(line)["event"] for line in rest.splitlines() if line.startswith(b"{")]
    assert events.index("chunk_handed_back") < events.index("worker_stopped")
    batch = await store.get_batch(batch_id)
    # The two items in flight finished (more if two others had just started).
    assert 2 <= batch.counts.succeeded < 10
    assert batch.counts.pending == 10 - batch.counts.succeeded  # handed back
    assert batch.counts.running == batch.counts.claimed == 0
    statuses = {s.spec.name: s for s in await store.list_handlers(settings.worker_ttl)}
    assert statuses["sleep"].live_workers == 0  # it withdrew from the catalog

    # Another worker takes the rest at once: had the lease not been given up, its claim
    # would find the chunk held, and this burst would end with the batch unfinished.
    await _burst(settings, [])
    batch = await store.get_batch(batch_id)
    assert (batch.state, batch.counts.succeeded) == (BatchState.COMPLETED, 10)
