"""Authentication and roles, attacked through a real server, Redis and client: every RPC
for every role, bad credentials of every kind, revocation across replicas, the audit
log, health and reflection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.asyncio import Redis
from support.in_process_server import HOST, running_server
from support.polling import poll

from batchd.client import AsyncClient, BatchdError
from batchd.core.credentials import CredentialStore
from batchd.server.app import BatchdServer
from batchd.server.auth import UNAUTHENTICATED_MESSAGE
from batchd.server.principal import METHOD_ROLES, Role
from batchd.v1 import batch_service_pb2, batch_service_pb2_grpc

ECHO = "test.echo"  # published by tests/server/conftest.py's store fixture
ITEMS = [{"custom_id": "a", "params": {"n": 1}}, {"custom_id": "b", "params": {"n": 2}}]


def client(server: BatchdServer, token: str | None) -> AsyncClient:
    return AsyncClient(f"{HOST}:{server.port}", token=token, timeout=10)


def key_id(key: str) -> str:
    return key.split("_", 2)[1]


def secret(key: str) -> str:
    return key.split("_", 2)[2]


async def new_key(credentials: CredentialStore, role: Role, tenant: str = "acme") -> str:
    key, _ = await credentials.create(tenant, role.name.lower(), "test")
    return key


# One call of each BatchService method. Calls on a batch name one that exists for the
# roles allowed to submit, or an unknown one (then NOT_FOUND means the call got through).
Call = Callable[[AsyncClient, str], Awaitable[Any]]


async def _watch(c: AsyncClient, batch_id: str) -> None:
    async for _ in c.watch(batch_id):
        return


async def _export(c: AsyncClient, batch_id: str) -> None:
    async for _ in c.export_results(batch_id):
        pass


async def _events(c: AsyncClient, batch_id: str) -> None:
    async for _ in c.watch_batches(heartbeats=True):
        return


CALLS: dict[str, Call] = {
    "GetBatch": lambda c, b: c.get(b),
    "ListBatches": lambda c, b: c.list_page(page_size=1),
    "ListBatchItems": lambda c, b: c.items_page(b),
    "WatchProgress": _watch,
    "ListHandlers": lambda c, b: c.handlers(),
    "SubmitBatch": lambda c, b: c.submit(ECHO, ITEMS),
    "UploadBatch": lambda c, b: c.upload(ECHO, ITEMS),
    "RetryBatchItems": lambda c, b: c.retry(b),
    "CancelBatch": lambda c, b: c.cancel(b),
    "PauseBatch": lambda c, b: c.pause(b),
    "ResumeBatch": lambda c, b: c.resume(b),
    "UpdateBatch": lambda c, b: c.update(b, priority=1),
    "DeleteBatch": lambda c, b: c.delete(b),
    "ExportBatchResults": _export,
    "WatchBatches": _events,
}


async def _error_of(call: Awaitable[Any]) -> BatchdError | None:
    try:
        await call
    except BatchdError as exc:
        return exc
    return None


def test_every_method_has_a_call_and_a_role() -> None:
    service = batch_service_pb2.DESCRIPTOR.services_by_name["BatchService"]
    assert set(CALLS) == set(METHOD_ROLES) == {m.name for m in service.methods}


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name.lower())
async def test_each_role_may_call_what_method_roles_says(
    secured: BatchdServer, credentials: CredentialStore, role: Role
) -> None:
    async with client(secured, await new_key(credentials, role)) as c:
        for method, call in CALLS.items():
            needed = METHOD_ROLES[method]
            error = await _error_of(call(c, f"missing-{uuid.uuid4().hex[:8]}"))
            if role >= needed:
                # Through: an error now is the batch's (NOT_FOUND), not the caller's.
                assert error is None or error.code not in {
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                }, (method, error)
            else:
                assert error is not None, method
                assert error.code == grpc.StatusCode.PERMISSION_DENIED, (method, error)
                assert error.message == (
                    f"this call needs the {needed.name.lower()} role; "
                    f"the caller has {role.name.lower()}"
                )


async def test_an_operator_works_on_a_real_batch(
    secured: BatchdServer, credentials: CredentialStore
) -> None:
    async with client(secured, await new_key(credentials, Role.OPERATOR)) as c:
        batch = (await c.submit(ECHO, ITEMS)).batch
        assert (await c.pause(batch.batch_id)).batch_id == batch.batch_id
        await c.resume(batch.batch_id)
        await c.update(batch.batch_id, priority=3)
        await c.cancel(batch.batch_id)
        assert (await c.get(batch.batch_id)).batch_id == batch.batch_id


async def raw_call(server: BatchdServer, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    """ListBatches with exactly `metadata`, as an attacker's own client would send it."""
    async with grpc.aio.insecure_channel(f"{HOST}:{server.port}") as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListBatches(batch_service_pb2.ListBatchesRequest(), metadata=metadata)
    return caught.value


async def test_bad_credentials_all_get_the_same_answer(
    secured: BatchdServer, credentials: CredentialStore
) -> None:
    revoked = await new_key(credentials, Role.ADMIN)
    await credentials.revoke(key_id(revoked))
    valid = await new_key(credentials, Role.ADMIN)
    attempts = {
        "no header": (),
        "garbage": (("authorization", "Bearer !!not-a-key!!"),),
        "a key of ours, revoked": (("authorization", f"Bearer {revoked}"),),
        "a key's id with a wrong secret": (
            ("authorization", f"Bearer bd_{key_id(valid)}_{'A' * 43}"),
        ),
        "Bearer and nothing": (("authorization", "Bearer "),),
        "a wrong scheme": (("authorization", f"Basic {valid}"),),
        "the key without a scheme": (("authorization", valid),),
        "another header": (("x-api-key", valid),),
    }
    answers = {}
    for name, metadata in attempts.items():
        error = await raw_call(secured, metadata)
        answers[name] = (error.code(), error.details())
    assert set(answers.values()) == {(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)}


@pytest.mark.slow
async def test_revocation_reaches_a_second_replica_within_the_cache_bound(
    redis_url: str, secured: BatchdServer, credentials: CredentialStore
) -> None:
    key = await new_key(credentials, Role.READER)
    async with (
        running_server(redis_url, auth="tokens", auth_cache_seconds=1.0) as replica,
        client(secured, key) as first,
        client(replica, key) as second,
    ):
        await first.handlers()
        await second.handlers()  # both replicas now hold the key in their caches
        assert await credentials.revoke(key_id(key))
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()

        async def refused(c: AsyncClient) -> float | None:
            error = await _error_of(c.handlers())
            if error is None:
                return None
            assert error.code == grpc.StatusCode.UNAUTHENTICATED
            return loop.time() - revoked_at

        # Within the 1 s cache bound, and a little scheduling slack.
        assert await poll(lambda: refused(first), within=3) <= 1.5
        assert await poll(lambda: refused(second), within=3) <= 1.5


async def test_keys_are_listed_without_the_key_and_stored_hashed(
    redis_url: str, credentials: CredentialStore
) -> None:
    key, record = await credentials.create("acme", "reader", "lister")
    listed = {r.key_id: r for r in await credentials.list()}
    assert listed[record.key_id].tenant == "acme"
    redis = Redis.from_url(redis_url)
    try:
        dump = [k async for k in redis.scan_iter("batchd:apikey*")]
        hidden = secret(key).encode()
        assert dump
        for name in dump:
            assert hidden not in name
            values = await redis.hgetall(name)
            assert hidden not in repr(values).encode()
    finally:
        await redis.aclose()


async def test_health_answers_without_credentials(secured: BatchdServer) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{secured.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(
    server: BatchdServer, metadata: tuple[tuple[str, str], ...], *, ask: bool = True
) -> Any:
    """The reflection service's list of services; `ask=False` sends no request message
    (for a server without the service: its refusal cannot race the client's send)."""
    async with grpc.aio.insecure_channel(f"{HOST}:{server.port}") as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        requests = [request] if ask else []
        async for reply in stub.ServerReflectionInfo(iter(requests), metadata=metadata):
            return reply
    raise AssertionError("no reply")


async def test_reflection_is_behind_authentication_unless_open(
    redis_url: str, secured: BatchdServer, credentials: CredentialStore
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_services(secured, ())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key = await new_key(credentials, Role.READER)
    reply = await _list_services(secured, (("authorization", f"Bearer {key}"),))
    assert reply.list_services_response.service
    async with running_server(redis_url, auth="tokens", reflection="open") as open_server:
        assert (await _list_services(open_server, ())).list_services_response.service
    async with running_server(redis_url, auth="tokens", reflection="off") as closed:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _list_services(closed, (("authorization", f"Bearer {key}"),), ask=False)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_mutating_calls_are_audited_without_the_key(
    secured: BatchdServer, credentials: CredentialStore
) -> None:
    key = await new_key(credentials, Role.SUBMITTER)
    with structlog.testing.capture_logs() as events:
        async with client(secured, key) as c:
            batch = (await c.submit(ECHO, ITEMS)).batch
            with pytest.raises(BatchdError):
                await c.cancel(batch.batch_id)  # PERMISSION_DENIED: never reaches the batch
            with pytest.raises(BatchdError):
                await c.retry("missing-batch")
            await c.get(batch.batch_id)  # a read: at debug
    assert secret(key) not in repr(events)
    audits = [e for e in events if e["event"] == "audit"]
    assert [(e["method"], e["log_level"]) for e in audits] == [
        ("SubmitBatch", "info"),
        ("RetryBatchItems", "info"),
        ("GetBatch", "debug"),
    ]
    assert {
        "principal": f"key:{key_id(key)}",
        "tenant": "acme",
        "role": "submitter",
        "method": "SubmitBatch",
        "batch_id": batch.batch_id,
        "code": "OK",
    }.items() <= audits[0].items()
    assert (audits[1]["code"], audits[1]["batch_id"]) == ("NOT_FOUND", "missing-batch")
    denied = [e for e in events if e["event"] == "permission_denied"]
    assert [e["role"] for e in denied] == ["submitter"]
