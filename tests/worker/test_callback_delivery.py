"""The callback delivery loop against the private Redis and a local receiver that never
says yes: failed attempts are retried with growing, jittered pauses and the event is
dropped at its deadline, logged and counted; an event whose tenant has no secret is
never sent unsigned; a receiver that stalls holds at most PER_HOST places, and another
receiver's event goes out meanwhile. Retry-After parsing, hostile values included."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest
import structlog
from aiohttp import web
from redis.asyncio import Redis
from support.http_peer import serving
from support.polling import poll

from batchd.core.callbacks import CallbackOutbox, CallbackSecrets
from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, ItemOutcome, ItemState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.callback_delivery import (
    MAX_RETRY_DELAY,
    PER_HOST,
    CallbackDelivery,
    retry_after,
    retry_delay,
)
from batchd.worker.metrics import WorkerMetrics

SECRET = "delivery-test-secret-0123456789"


def test_the_retry_delay_doubles_with_jitter_up_to_its_cap() -> None:
    assert [retry_delay(2.0, n, lambda: 1.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert [retry_delay(2.0, n, lambda: 0.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert retry_delay(2.0, 50, lambda: 1.0) == MAX_RETRY_DELAY


NOW = 1_800_000_000.0  # a whole second, as HTTP-dates are


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW + 30).replace("+0000", "-0000"), 30.0),  # no zone: GMT
        (formatdate(NOW - 3600, usegmt=True), 0.0),  # past: at once
        ("86400", MAX_RETRY_DELAY),  # huge: the longest back-off
        ("9" * 5000, MAX_RETRY_DELAY),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_DELAY),
        (None, None),
        ("", None),
        ("-5", None),  # negative
        ("1.5", None),  # not a count of seconds
        ("soon", None),
        ("²", None),
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),  # out of range
        ("Wed, 32 Foo 2026 25:61:61 GMT", None),
        ("\x00\r\n" * 100, None),
    ],
)
def test_retry_after_is_seconds_or_a_date_and_garbage_is_ignored(
    value: str | None, seconds: float | None
) -> None:
    assert retry_after(value, NOW) == seconds


@contextlib.asynccontextmanager
async def refusing() -> AsyncIterator[tuple[str, list[float]]]:
    """A receiver that answers 503 to everything; yields its URL and the POSTs' times."""
    times: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        times.append(time.time())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serving(app) as base:
        yield f"{base}/hook", times


async def ended_batch(store: BatchStore, url: str) -> None:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=1, callback_url=url),
        metadata={},
    )
    session = await store.begin_upload(spec)
    await session.add_items([NewItem(custom_id="a", params_json=b"{}")])
    batch, _ = await session.commit()
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=60)
    assert claimed is not None
    outcome = ItemOutcome(0, ItemState.SUCCEEDED, 1, 1.0, 2.0, b"{}")
    await store.record_outcomes(batch.batch_id, 0, [outcome], token=claimed.token, release=True)


@pytest.mark.parametrize("secret", [SECRET, ""], ids=["signed", "no-secret"])
async def test_an_event_never_acknowledged_is_dropped_at_its_deadline(
    redis: Redis, secret: str
) -> None:
    keys = Keys(f"cd{uuid.uuid4().hex[:8]}:")
    store = BatchStore(redis, keys)
    async with refusing() as (url, posts):
        settings = Settings(
            egress_allow=url.split("/")[2],
            callback_secret=secret,
            callback_deadline=0.6,
            callback_retry_delay=0.05,
            maintenance_interval=0.02,
        )
        metrics = WorkerMetrics([])
        delivery = CallbackDelivery(
            settings, CallbackOutbox(redis, keys), CallbackSecrets.from_settings(settings), metrics
        )
        await ended_batch(store, url)
        ended = time.time()

        def count(result: str) -> float:
            value = metrics.registry.get_sample_value(
                "batchd_worker_callbacks_total", {"result": result}
            )
            return value or 0.0

        async def dropped() -> bool | None:
            return True if count("dropped") else None

        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(delivery.run())
            try:
                await poll(dropped)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert await redis.zcard(keys.callbacks) == 0
        assert count("delivered") == 0
        assert count("failed") >= 2  # retried before the deadline
        events = [e["event"] for e in logs if e["event"].startswith("callback_")]
        assert events[-1] == "callback_dropped"
        assert set(events[:-1]) == {"callback_failed"}
        (dropped_log,) = [e for e in logs if e["event"] == "callback_dropped"]
        assert "deadline passed" in dropped_log["reason"]
        if secret:
            assert len(posts) >= 2
            assert all(t <= ended + 0.6 + 0.5 for t in posts)  # none long past the deadline
        else:
            assert posts == []  # never sent unsigned
            assert "no signing secret" in dropped_log["reason"]


@contextlib.asynccontextmanager
async def receivers() -> AsyncIterator[tuple[str, str, asyncio.Event, asyncio.Event]]:
    """Two receivers on one port: /slow holds every POST until the test ends, /fast
    answers 204. Yields their URLs and events set when each has had a POST."""
    slow_started = asyncio.Event()
    fast_answered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        slow_started.set()
        await release.wait()
        return web.Response(status=204)

    async def fast(request: web.Request) -> web.Response:
        fast_answered.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/slow", slow)
    app.router.add_post("/fast", fast)
    async with serving(app) as base:
        try:
            yield f"{base}/slow", f"{base}/fast", slow_started, fast_answered
        finally:
            release.set()


async def test_a_receiver_that_stalls_holds_up_no_later_event(redis: Redis) -> None:
    keys = Keys(f"cd{uuid.uuid4().hex[:8]}:")
    store = BatchStore(redis, keys)
    async with receivers() as (slow_url, fast_url, slow_started, fast_answered):
        settings = Settings(
            egress_allow=slow_url.split("/")[2],
            callback_secret=SECRET,
            callback_timeout=60.0,  # the stalled POST outlasts the test
            maintenance_interval=0.02,
        )
        outbox = CallbackOutbox(redis, keys)
        delivery = CallbackDelivery(settings, outbox, CallbackSecrets.from_settings(settings))
        task = asyncio.create_task(delivery.run())
        try:
            await ended_batch(store, slow_url)
            await asyncio.wait_for(slow_started.wait(), 10)
            await ended_batch(store, fast_url)  # filed while the first POST hangs
            await asyncio.wait_for(fast_answered.wait(), 10)

            async def only_the_stalled_one_left() -> bool | None:
                return True if await outbox.pending() == 1 else None

            await poll(only_the_stalled_one_left, within=10)  # the other acknowledged
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The stalled delivery was cut short, its event left to come due again.
        assert await outbox.pending() == 1


@contextlib.asynccontextmanager
async def stalling() -> AsyncIterator[tuple[str, list[int], asyncio.Event, asyncio.Event]]:
    """A receiver that holds every POST until released, then answers 204. Yields its URL,
    how many POSTs it holds after each arrives, an event set when it holds PER_HOST, and
    the release."""
    held: list[int] = []
    holding = 0
    full = asyncio.Event()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal holding
        holding += 1
        held.append(holding)
        if holding >= PER_HOST:
            full.set()
        try:
            await release.wait()
        finally:
            holding -= 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serving(app) as base:
        try:
            yield f"{base}/hook", held, full, release
        finally:
            release.set()


@contextlib.asynccontextmanager
async def accepting() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A receiver that answers 204 at once; yields its URL and an event set on a POST."""
    answered = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        answered.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serving(app) as base:
        yield f"{base}/hook", answered


async def test_a_stalled_receiver_holds_at_most_its_cap_and_loses_no_event(
    redis: Redis,
) -> None:
    keys = Keys(f"cd{uuid.uuid4().hex[:8]}:")
    store = BatchStore(redis, keys)
    many = 20  # more than all IN_FLIGHT places
    async with stalling() as (slow_url, held, full, release), accepting() as (fast_url, answered):
        settings = Settings(
            egress_allow=f"{slow_url.split('/')[2]},{fast_url.split('/')[2]}",
            callback_secret=SECRET,
            callback_timeout=60.0,  # the stalled POSTs outlast the test
            maintenance_interval=0.02,
        )
        outbox = CallbackOutbox(redis, keys)
        metrics = WorkerMetrics([])
        delivery = CallbackDelivery(
            settings, outbox, CallbackSecrets.from_settings(settings), metrics
        )
        for _ in range(many):
            await ended_batch(store, slow_url)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(delivery.run())
            try:
                await asyncio.wait_for(full.wait(), 10)
                await ended_batch(store, fast_url)  # another receiver, while it stalls
                await asyncio.wait_for(answered.wait(), 10)
                assert max(held) == PER_HOST  # the rest were put back, not sent
                release.set()

                async def all_delivered() -> bool | None:
                    return True if await outbox.pending() == 0 else None

                await poll(all_delivered, within=30)  # none lost
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert len(held) == many
        delivered = [e for e in logs if e["event"] == "callback_delivered"]
        assert len(delivered) == many + 1
        # Put back, an event's try was not counted: each went out at its first attempt.
        assert {e["attempt"] for e in delivered} == {1}
        assert metrics.registry.get_sample_value(
            "batchd_worker_callbacks_total", {"result": "failed"}
        ) in (None, 0.0)
