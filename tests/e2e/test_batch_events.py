"""WatchBatches through the real client, server, Redis and worker: a batch's events arrive
in order as it runs; filters by state, label and type hold; a resume from a cursor gets
exactly the events after it; a tenant sees only its own; bad requests get clear errors;
and a watch resumes across a restart of its server without losing or repeating one.

The session's stream is shared by every test on it, so each test labels its batches
with a run id of its own and filters on it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import cast

import grpc
import pytest
from redis.asyncio import Redis

from batchd.client import (
    AsyncClient,
    BatchdError,
    BatchEvent,
    BatchEventType,
    BatchState,
    WatchReconnect,
    WatchRetry,
)
from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer, start_server

T = BatchEventType
ITEMS = [{"custom_id": f"i{n}", "params": {}} for n in range(5)]
WAIT = 30.0  # seconds any awaited event may take on a loaded machine


def run_id() -> str:
    return uuid.uuid4().hex[:12]


class Watch:
    """A watch_batches() running in a task, its events (heartbeats apart) in a queue."""

    def __init__(self, events: AsyncIterator[BatchEvent]) -> None:
        self._events = events
        self.queue: asyncio.Queue[BatchEvent] = asyncio.Queue()
        self.started = asyncio.Event()  # the first message (a heartbeat) came
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self._events:
            self.started.set()
            if not event.heartbeat:
                await self.queue.put(event)

    async def ready(self) -> Watch:
        async with asyncio.timeout(WAIT):
            await self.started.wait()
        return self

    async def take(self, count: int) -> list[BatchEvent]:
        async with asyncio.timeout(WAIT):
            return [await self.queue.get() for _ in range(count)]

    async def until(self, stop: Callable[[BatchEvent], bool]) -> list[BatchEvent]:
        taken: list[BatchEvent] = []
        async with asyncio.timeout(WAIT):
            while not taken or not stop(taken[-1]):
                taken.append(await self.queue.get())
        return taken

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def watching() -> AsyncIterator[Callable[[AsyncIterator[BatchEvent]], Awaitable[Watch]]]:
    watches: list[Watch] = []

    async def start(events: AsyncIterator[BatchEvent]) -> Watch:
        watch = Watch(events)
        watches.append(watch)
        return await watch.ready()

    yield start
    for watch in watches:
        await watch.close()


def finished(batch_id: str) -> Callable[[BatchEvent], bool]:
    return lambda e: e.batch_id == batch_id and e.type is T.FINISHED


def shape(events: Sequence[BatchEvent]) -> list[tuple[str, T, BatchState]]:
    return [(e.batch_id, e.type, e.state) for e in events]


Watching = Callable[[AsyncIterator[BatchEvent]], Awaitable[Watch]]


async def test_submit_start_finish_arrive_in_order(client: AsyncClient, watching: Watching) -> None:
    run = run_id()
    watch = await watching(client.watch_batches(labels={"run": run}, heartbeats=True))
    submitted = await client.submit("noop", ITEMS, metadata={"run": run, "team": "a"})
    bid = submitted.batch.batch_id
    events = await watch.until(finished(bid))
    assert shape(events) == [
        (bid, T.CREATED, BatchState.QUEUED),
        (bid, T.STARTED, BatchState.RUNNING),
        (bid, T.FINISHED, BatchState.COMPLETED),
    ]
    assert events[0].metadata == {"run": run, "team": "a"}
    assert events[0].handler == "noop"
    assert events[0].total_items == 5
    assert events[0].counts.pending == 5
    assert events[-1].counts.succeeded == 5
    assert all(e.event_time is not None for e in events)
    assert len({e.cursor for e in events}) == 3


async def test_filters_by_state_label_and_type(client: AsyncClient, watching: Watching) -> None:
    run = run_id()
    completed = await watching(
        client.watch_batches(
            states=[BatchState.COMPLETED], labels={"run": run, "kind": "x"}, heartbeats=True
        )
    )
    created = await watching(
        client.watch_batches(types=[T.CREATED], labels={"run": run}, heartbeats=True)
    )
    a = (await client.submit("noop", ITEMS, metadata={"run": run, "kind": "x"})).batch
    b = (await client.submit("noop", ITEMS, metadata={"run": run, "kind": "y"})).batch
    states = [progress.state async for progress in client.watch(b.batch_id)]
    assert states[-1] is BatchState.COMPLETED
    # A later batch that passes: had b's end passed the filter, it would have come first.
    a2 = (await client.submit("noop", ITEMS, metadata={"run": run, "kind": "x"})).batch
    assert shape(await completed.until(finished(a2.batch_id))) == [
        (a.batch_id, T.FINISHED, BatchState.COMPLETED),
        (a2.batch_id, T.FINISHED, BatchState.COMPLETED),
    ]
    assert shape(await created.take(3)) == [
        (batch.batch_id, T.CREATED, BatchState.QUEUED) for batch in (a, b, a2)
    ]


async def test_a_resume_gets_exactly_the_events_after_its_cursor(
    client: AsyncClient, watching: Watching
) -> None:
    run = run_id()
    first = await watching(client.watch_batches(labels={"run": run}, heartbeats=True))
    batches = [(await client.submit("noop", ITEMS, metadata={"run": run})).batch for _ in "abc"]
    seen = await first.take(3 * 3)
    assert sorted(e.type for e in seen) == sorted([T.CREATED, T.STARTED, T.FINISHED] * 3)
    assert {e.batch_id for e in seen} == {b.batch_id for b in batches}
    middle = 4
    resumed = await watching(
        client.watch_batches(labels={"run": run}, cursor=seen[middle].cursor, heartbeats=True)
    )
    after = await resumed.take(len(seen) - middle - 1)
    assert [e.cursor for e in after] == [e.cursor for e in seen[middle + 1 :]]
    # Nothing more comes before the next event: not one is repeated.
    last = (await client.submit("noop", ITEMS[:1], metadata={"run": run})).batch
    (nxt,) = await resumed.take(1)
    assert (nxt.batch_id, nxt.type) == (last.batch_id, T.CREATED)


async def test_from_oldest_starts_with_the_oldest_retained(
    client: AsyncClient, watching: Watching
) -> None:
    run = run_id()
    batch = (await client.submit("noop", ITEMS[:1], metadata={"run": run})).batch
    watch = await watching(client.watch_batches(labels={"run": run}, from_oldest=True))
    assert (await watch.take(1))[0].batch_id == batch.batch_id


async def first_error(events: AsyncIterator[BatchEvent]) -> BatchdError:
    """The error a watch ends with, which must come before any message (heartbeats
    asked for or not)."""
    received: list[BatchEvent] = []

    async def collect() -> None:
        async with asyncio.timeout(WAIT):
            async for event in events:
                received.append(event)  # noqa: PERF401 -- what came before the error

    with pytest.raises(BatchdError) as caught:
        await collect()
    assert received == []
    return caught.value


async def test_bad_requests_are_invalid_with_the_fields_named(client: AsyncClient) -> None:
    cases = {
        "cursor": client.watch_batches(cursor="not-a-cursor"),
        "from_oldest": client.watch_batches(cursor="1-0", from_oldest=True),
        "states[0]": client.watch_batches(states=[99]),
        "types[1]": client.watch_batches(types=[T.CREATED, 42]),
        "labels['']": client.watch_batches(labels={"": "x"}),
    }
    for field, events in cases.items():
        error = await first_error(events)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, field
        assert [v.field for v in error.field_violations] == [field]


async def test_a_cursor_past_the_stream_fails_precondition(client: AsyncClient) -> None:
    error = await first_error(client.watch_batches(cursor="99999999999999-0", heartbeats=True))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "past the last event" in error.message


# -- tenants -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def secured(settings: Settings) -> AsyncIterator[BatchdServer]:
    """The e2e service with API keys (the session's worker runs its batches)."""
    running = await start_server(
        dataclasses.replace(settings, auth="tokens"), port=0, metrics_port=0
    )
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def tenant_client(
    secured: BatchdServer, settings: Settings, redis_url: str
) -> AsyncIterator[Callable[[str], Awaitable[AsyncClient]]]:
    redis = Redis.from_url(redis_url)
    credentials = CredentialStore(redis, Keys(settings.key_prefix))
    opened: list[AsyncClient] = []

    async def open_client(tenant: str) -> AsyncClient:
        key, _ = await credentials.create(tenant, "submitter", "events test")
        opened.append(AsyncClient(f"127.0.0.1:{secured.port}", token=key, timeout=10))
        return opened[-1]

    yield open_client
    for client in opened:
        await client.close()
    await redis.aclose()


async def test_a_tenant_sees_only_its_own_events(
    tenant_client: Callable[[str], Awaitable[AsyncClient]], worker: None, watching: Watching
) -> None:
    mine, theirs = f"t{run_id()}", f"t{run_id()}"
    me, other = await tenant_client(mine), await tenant_client(theirs)
    watch = await watching(me.watch_batches(heartbeats=True))
    await other.submit("noop", ITEMS, batch_id="same-name")
    await me.submit("noop", ITEMS, batch_id="same-name")
    events = await watch.until(finished("same-name"))
    # The other tenant's batch came first, yet no event of it did; ids as the tenant gave them.
    assert shape(events) == [
        ("same-name", T.CREATED, BatchState.QUEUED),
        ("same-name", T.STARTED, BatchState.RUNNING),
        ("same-name", T.FINISHED, BatchState.COMPLETED),
    ]


async def test_a_trimmed_cursor_fails_precondition_saying_how_to_restart(
    tenant_client: Callable[[str], Awaitable[AsyncClient]],
    settings: Settings,
    redis: Redis,
    worker: None,
    watching: Watching,
) -> None:
    tenant = f"t{run_id()}"
    me = await tenant_client(tenant)
    watch = await watching(me.watch_batches(heartbeats=True))
    await me.submit("noop", ITEMS[:1])
    (event,) = await watch.take(1)
    stream = Keys(settings.key_prefix).events(tenant)
    for n in range(10):  # newer events push it out, as XADD MAXLEN does at its retention
        entry = {"type": "CREATED", "batch": f"{tenant}~f{n}", "state": 1}
        await redis.xadd(stream, entry, maxlen=3, approximate=False)  # type: ignore[arg-type]
    error = await first_error(me.watch_batches(cursor=event.cursor, heartbeats=True))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "trimmed" in error.message
    assert "from_oldest" in error.message


# -- a server restart -----------------------------------------------------------------


async def test_a_watch_resumes_across_a_server_restart(
    settings: Settings, client: AsyncClient, free_port: int, watching: Watching
) -> None:
    run = run_id()
    restartable = dataclasses.replace(settings, port=free_port)
    server = await start_server(restartable, metrics_port=0)
    reconnects: list[WatchReconnect] = []
    async with AsyncClient(f"127.0.0.1:{free_port}") as watcher:
        retry = WatchRetry(initial_backoff=0.05, max_backoff=0.2, max_retries=200)
        watch = await watching(
            watcher.watch_batches(
                labels={"run": run}, heartbeats=True, retry=retry, on_reconnect=reconnects.append
            )
        )
        one = (await client.submit("noop", ITEMS, metadata={"run": run})).batch
        before = await watch.until(finished(one.batch_id))
        await server.stop(grace=1)
        # Events while the watcher's server is away, through another server.
        two = (await client.submit("noop", ITEMS, metadata={"run": run})).batch
        async for _ in client.watch(two.batch_id):
            pass
        server = await start_server(restartable, metrics_port=0)
        try:
            after = await watch.until(finished(two.batch_id))
        finally:
            await server.stop(grace=0)
    assert shape(before) == [
        (one.batch_id, T.CREATED, BatchState.QUEUED),
        (one.batch_id, T.STARTED, BatchState.RUNNING),
        (one.batch_id, T.FINISHED, BatchState.COMPLETED),
    ]
    assert shape(after) == [
        (two.batch_id, T.CREATED, BatchState.QUEUED),
        (two.batch_id, T.STARTED, BatchState.RUNNING),
        (two.batch_id, T.FINISHED, BatchState.COMPLETED),
    ]
    assert reconnects
    assert reconnects[0].error.code is grpc.StatusCode.UNAVAILABLE


async def test_a_quiet_stream_sends_heartbeats_with_its_cursor(client: AsyncClient) -> None:
    run = run_id()  # a label no batch has: nothing but heartbeats
    events = cast(
        AsyncGenerator[BatchEvent, None],
        client.watch_batches(labels={"run": run}, heartbeat_interval=1.0, heartbeats=True),
    )
    async with asyncio.timeout(WAIT):
        first = await anext(events)
        await client.submit("noop", ITEMS[:1], metadata={"run": "another"})
        second = await anext(events)
    await events.aclose()
    assert first.heartbeat
    assert second.heartbeat
    # The other batch's events were read and dropped: the cursor moved past them.
    assert position(second.cursor) > position(first.cursor)


def position(cursor: str) -> tuple[int, int]:
    ms, seq = cursor.split("-")
    return int(ms), int(seq)
