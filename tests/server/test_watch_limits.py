"""A tenant's open WatchProgress streams, limited across every server on the Redis
(BATCHD_TENANT_MAX_WATCHERS), through real servers on real ports over the session's
private Valkey: refused past the limit with the quota named, freed as streams end,
shared by servers, and a SIGKILLed server's ceasing to count."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import cast

import grpc
import pytest
from redis.asyncio import Redis
from support import processes
from support.in_process_server import HOST, running_server
from support.polling import poll

from batchd.client import AsyncClient, BatchdError, BatchEvent, BatchProgress
from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.core.watchers import WatcherCounts

ECHO = "test.echo"  # published by tests/server/conftest.py's store fixture
ITEMS = [{"custom_id": "a", "params": {"n": 1}}]

Watch = AsyncGenerator[BatchProgress, None]


@pytest.fixture
async def counts(redis_url: str) -> AsyncIterator[WatcherCounts]:
    """A reader of the tenants' counts as the servers keep them (it never opens any)."""
    redis = Redis.from_url(redis_url)
    yield WatcherCounts(redis, Keys(), limit=1, ttl=1)
    await redis.aclose()


class Clients:
    """Clients holding fresh keys of given tenants and roles; each watch held open until
    closed, or until the test ends."""

    def __init__(self, credentials: CredentialStore, stack: AsyncExitStack) -> None:
        self.credentials = credentials
        self.stack = stack

    async def of(self, port: int, tenant: str, role: str = "operator") -> AsyncClient:
        key, _ = await self.credentials.create(tenant, role, "watch limits test")
        client = AsyncClient(f"{HOST}:{port}", token=key, timeout=10)
        return await self.stack.enter_async_context(client)

    async def watching(self, client: AsyncClient, batch_id: str) -> Watch:
        """A watch of the batch with its first snapshot received: open on the server."""
        watch = cast(Watch, client.watch(batch_id))
        self.stack.push_async_callback(watch.aclose)
        await anext(watch)
        return watch


@pytest.fixture
async def clients(credentials: CredentialStore) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield Clients(credentials, stack)


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def refusal(opening: Awaitable[object]) -> BatchdError:
    with pytest.raises(BatchdError) as caught:
        await opening
    return caught.value


def assert_over_watchers(error: BatchdError, name: str, limit: int) -> None:
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "BATCHD_TENANT_MAX_WATCHERS" in error.message
    [violation] = error.quota_violations
    assert violation.subject == f"tenant:{name}:max_watchers"
    assert f"at most {limit}" in violation.description
    assert "BATCHD_TENANT_MAX_WATCHERS" in violation.description
    assert error.retry_after == 5


def streams_are(
    counts: WatcherCounts, name: str, expected: int
) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return True if await counts.open_streams(name) == expected else None

    return probe


async def test_a_tenant_past_its_watchers_is_refused_while_others_watch(
    redis_url: str, store: BatchStore, clients: Clients, counts: WatcherCounts
) -> None:
    acme, globex = tenant(), tenant()
    async with running_server(redis_url, auth="tokens", tenant_max_watchers=2) as server:
        a, g = await clients.of(server.port, acme), await clients.of(server.port, globex)
        mine = (await a.submit(ECHO, ITEMS)).batch.batch_id
        theirs = (await g.submit(ECHO, ITEMS)).batch.batch_id
        first = await clients.watching(a, mine)
        await clients.watching(a, mine)

        assert_over_watchers(await refusal(clients.watching(a, mine)), acme, 2)
        # Another tenant watches on, and so does an admin of the full one.
        await clients.watching(g, theirs)
        await clients.watching(g, theirs)
        admin = await clients.of(server.port, acme, "admin")
        await clients.watching(admin, mine)
        assert await counts.open_streams(acme) == 2  # the admin's is not counted

        # A watch that ends frees its slot.
        await first.aclose()
        await poll(streams_are(counts, acme, 1))
        await clients.watching(a, mine)
        assert await counts.open_streams(acme) == 2


async def test_servers_on_one_redis_share_a_tenants_count(
    redis_url: str, store: BatchStore, clients: Clients, counts: WatcherCounts
) -> None:
    acme = tenant()
    async with (
        running_server(redis_url, auth="tokens", tenant_max_watchers=3) as one,
        running_server(redis_url, auth="tokens", tenant_max_watchers=3) as two,
    ):
        on_one, on_two = await clients.of(one.port, acme), await clients.of(two.port, acme)
        batch_id = (await on_one.submit(ECHO, ITEMS)).batch.batch_id
        await clients.watching(on_one, batch_id)
        await clients.watching(on_one, batch_id)
        await clients.watching(on_two, batch_id)
        assert await counts.open_streams(acme) == 3
        assert_over_watchers(await refusal(clients.watching(on_two, batch_id)), acme, 3)
        assert_over_watchers(await refusal(clients.watching(on_one, batch_id)), acme, 3)


@pytest.mark.chaos
@pytest.mark.slow
async def test_a_killed_servers_watchers_stop_counting(
    redis_url: str,
    store: BatchStore,
    clients: Clients,
    counts: WatcherCounts,
    free_port: int,
    tmp_path: Path,
) -> None:
    acme = tenant()
    env = {
        "BATCHD_REDIS_URL": redis_url,
        "BATCHD_PORT": str(free_port),
        "BATCHD_AUTH": "tokens",
        "BATCHD_TENANT_MAX_WATCHERS": "2",
        "BATCHD_SERVER_TTL": "1",
    }
    doomed = processes.server(env, tmp_path / "server.log").start()
    try:
        on_doomed = await clients.of(free_port, acme)

        async def serving() -> bool | None:
            assert doomed.running(), doomed.log_tail()
            try:
                return bool(await on_doomed.handlers())
            except BatchdError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None

        await poll(serving)
        batch_id = (await on_doomed.submit(ECHO, ITEMS)).batch.batch_id
        await clients.watching(on_doomed, batch_id)
        await clients.watching(on_doomed, batch_id)
        async with running_server(
            redis_url, auth="tokens", tenant_max_watchers=2, server_ttl=1
        ) as survivor:
            on_survivor = await clients.of(survivor.port, acme)
            assert_over_watchers(await refusal(clients.watching(on_survivor, batch_id)), acme, 2)

            doomed.kill()
            await poll(streams_are(counts, acme, 0))
            await clients.watching(on_survivor, batch_id)
            await clients.watching(on_survivor, batch_id)
            assert_over_watchers(await refusal(clients.watching(on_survivor, batch_id)), acme, 2)
    finally:
        doomed.stop()


async def test_batch_event_streams_take_the_same_slots(
    redis_url: str, store: BatchStore, clients: Clients, counts: WatcherCounts
) -> None:
    acme = tenant()

    async def events_open(client: AsyncClient) -> AsyncGenerator[BatchEvent, None]:
        """A WatchBatches stream with its first message (a heartbeat) received: open."""
        events = cast(AsyncGenerator[BatchEvent, None], client.watch_batches(heartbeats=True))
        clients.stack.push_async_callback(events.aclose)
        await anext(events)
        return events

    async with running_server(redis_url, auth="tokens", tenant_max_watchers=2) as server:
        a = await clients.of(server.port, acme, "reader")
        first = await events_open(a)
        batch_id = (await (await clients.of(server.port, acme)).submit(ECHO, ITEMS)).batch.batch_id
        await clients.watching(a, batch_id)
        error = await refusal(events_open(a))
        assert_over_watchers(error, acme, 2)
        assert "WatchBatches" in error.message
        await first.aclose()
        await poll(streams_are(counts, acme, 1))
        await events_open(a)
