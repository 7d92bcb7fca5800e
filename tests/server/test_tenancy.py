"""Tenants, through a real server with API keys, Redis and client: a tenant sees and
changes only its own batches (another's is NOT_FOUND, whatever the call), may reuse the
ids, request ids and rate-limit keys another uses without meeting it, and is held to its
quotas; an admin sees every tenant's batches."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from support.in_process_server import HOST, running_server

from batchd.client import AsyncClient, BatchdError, BatchState
from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.server.app import BatchdServer

ECHO = "test.echo"  # published by tests/server/conftest.py's store fixture
ITEMS = [{"custom_id": "a", "params": {"n": 1}}, {"custom_id": "b", "params": {"n": 2}}]


Connect = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def connect(
    secured: BatchdServer, credentials: CredentialStore
) -> AsyncIterator[Callable[..., Awaitable[AsyncClient]]]:
    """connect(tenant, role) -> a client holding a fresh key of that tenant and role."""
    opened: list[AsyncClient] = []

    async def open_client(tenant: str, role: str = "operator") -> AsyncClient:
        key, _ = await credentials.create(tenant, role, "tenancy test")
        client = AsyncClient(f"{HOST}:{secured.port}", token=key, timeout=10)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def _watch(c: AsyncClient, batch_id: str) -> None:
    async for _ in c.watch(batch_id):
        return


async def _export(c: AsyncClient, batch_id: str) -> None:
    async for _ in c.export_results(batch_id):
        pass


# Every call that names a batch, as another tenant would make it.
ON_A_BATCH: dict[str, Callable[[AsyncClient, str], Awaitable[Any]]] = {
    "GetBatch": lambda c, b: c.get(b),
    "ListBatchItems": lambda c, b: c.items_page(b),
    "WatchProgress": _watch,
    "CancelBatch": lambda c, b: c.cancel(b),
    "PauseBatch": lambda c, b: c.pause(b),
    "ResumeBatch": lambda c, b: c.resume(b),
    "UpdateBatch": lambda c, b: c.update(b, priority=-1000),
    "RetryBatchItems": lambda c, b: c.retry(b),
    "DeleteBatch": lambda c, b: c.delete(b),
    "ExportBatchResults": _export,
}


@pytest.mark.parametrize("method", sorted(ON_A_BATCH))
async def test_another_tenants_batch_is_not_found_whatever_the_call(
    connect: Connect, method: str
) -> None:
    owner, intruder = await connect(tenant()), await connect(tenant())
    batch = (await owner.submit(ECHO, ITEMS, batch_id="shared-name")).batch
    with pytest.raises(BatchdError) as caught:
        await ON_A_BATCH[method](intruder, batch.batch_id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.message == "batch 'shared-name' not found"  # the id it gave
    # The owner's batch is untouched.
    again = await owner.get(batch.batch_id)
    assert (again.state, again.options.priority) == (BatchState.QUEUED, batch.options.priority)


async def test_tenants_reuse_ids_and_request_ids_without_meeting(connect: Connect) -> None:
    first, second = await connect(tenant()), await connect(tenant())
    one = await first.submit(ECHO, ITEMS, batch_id="nightly", request_id="run-1")
    two = await second.submit(ECHO, ITEMS[:1], batch_id="nightly", request_id="run-1")
    assert not two.replayed  # a request_id another tenant used first is no one's but its own
    assert (one.batch.batch_id, two.batch.batch_id) == ("nightly", "nightly")
    assert (one.batch.total_items, two.batch.total_items) == (2, 1)
    assert (await first.get("nightly")).total_items == 2
    assert (await second.get("nightly")).total_items == 1
    replay = await second.submit(ECHO, ITEMS[:1], batch_id="nightly", request_id="run-1")
    assert replay.replayed


async def test_a_tenant_lists_only_its_own_and_an_admin_every_tenants(
    connect: Connect, store: BatchStore
) -> None:
    acme, globex = tenant(), tenant()
    a, g = await connect(acme), await connect(globex)
    mine = (await a.submit(ECHO, ITEMS)).batch.batch_id
    theirs = (await g.submit(ECHO, ITEMS)).batch.batch_id
    page = await a.list_page(page_size=100)
    assert [b.batch_id for b in page.items] == [mine]
    admin = await connect(tenant(), "admin")
    everything = await admin.list_page(page_size=1000)
    shown = {b.batch_id for b in everything.items}
    assert {f"{acme}~{mine}", f"{globex}~{theirs}"} <= shown
    # An admin names another tenant's batch by the id it is shown.
    assert (await admin.get(f"{globex}~{theirs}")).total_items == 2


async def test_a_shared_rate_limit_key_is_each_tenants_own(
    connect: Connect, store: BatchStore
) -> None:
    acme, globex = tenant(), tenant()
    a, g = await connect(acme), await connect(globex)
    limited = {"rate_limit_key": "partner", "max_per_second": 0.5}
    slow = (await a.submit(ECHO, ITEMS, options=limited)).batch
    fast = (await g.submit(ECHO, ITEMS, options={"rate_limit_key": "partner"})).batch
    assert slow.options.rate_limit_key == fast.options.rate_limit_key == "partner"
    stored = [await store.get_batch(f"{t}~{b.batch_id}") for t, b in ((acme, slow), (globex, fast))]
    keys = Keys()
    buckets = {keys.rate_key(b.options.rate_limit_key) for b in stored}
    assert buckets == {keys.rate_key(f"{acme}~partner"), keys.rate_key(f"{globex}~partner")}
    with pytest.raises(BatchdError) as refused:
        await a.submit(ECHO, ITEMS, options={"rate_limit_key": "other~partner"})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_tenant_quotas_answer_resource_exhausted_with_when_to_retry(
    redis_url: str, store: BatchStore, credentials: CredentialStore
) -> None:
    async with running_server(
        redis_url, auth="tokens", tenant_max_open_batches=1, tenant_max_items_per_second=2
    ) as server:
        key, _ = await credentials.create(tenant(), "submitter", "quota test")
        async with AsyncClient(f"{HOST}:{server.port}", token=key, timeout=10) as client:
            await client.submit(ECHO, ITEMS)
            with pytest.raises(BatchdError) as caught:
                await client.submit(ECHO, ITEMS)
    error = caught.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_after is not None
    assert error.retry_after > 0
    assert [v.subject.rsplit(":", 1)[1] for v in error.quota_violations] == ["max_open_batches"]
