"""Rich errors from a real grpc.aio server become one BatchdError, in both clients."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from client.client_fakes import Abort, FakeBatchService
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from batchd.client import AsyncClient, BatchdError, Client, FieldViolation

BAD_REQUEST = error_details_pb2.BadRequest(
    field_violations=[
        error_details_pb2.BadRequest.FieldViolation(
            field="items[12].custom_id", description="duplicate of items[3]"
        ),
        error_details_pb2.BadRequest.FieldViolation(
            field="options.chunk_size", description="must be 1 to 10000"
        ),
    ]
)
RETRY_INFO = error_details_pb2.RetryInfo(
    retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
)


async def test_invalid_argument_carries_field_violations(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.errors["SubmitBatch"] = [
        Abort(grpc.StatusCode.INVALID_ARGUMENT, "2 invalid fields", [BAD_REQUEST])
    ]
    with pytest.raises(BatchdError) as caught:
        await aclient.submit("noop", [("a", {})])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "2 invalid fields"
    assert error.field_violations == [
        FieldViolation("items[12].custom_id", "duplicate of items[3]"),
        FieldViolation("options.chunk_size", "must be 1 to 10000"),
    ]
    assert error.retry_after is None
    assert isinstance(error.__cause__, grpc.RpcError)


async def test_retry_info_becomes_retry_after(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.errors["ListHandlers"] = [
        Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [RETRY_INFO])
    ]
    with pytest.raises(BatchdError) as caught:
        await aclient.handlers()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after == 1.5
    assert caught.value.field_violations == []


async def test_plain_status_without_details(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.errors["GetBatch"] = [Abort(grpc.StatusCode.NOT_FOUND, 'batch "nope" not found')]
    with pytest.raises(BatchdError) as caught:
        await aclient.get("nope")
    assert (caught.value.code, caught.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        'batch "nope" not found',
    )
    assert caught.value.field_violations == []
    assert caught.value.retry_after is None


async def test_sync_client_raises_the_same_error(service: FakeBatchService, client: Client) -> None:
    service.errors["CancelBatch"] = [
        Abort(grpc.StatusCode.FAILED_PRECONDITION, "not yours", [BAD_REQUEST, RETRY_INFO])
    ]
    with pytest.raises(BatchdError) as caught:
        await asyncio.to_thread(client.cancel, "b1")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == "not yours"
    assert len(caught.value.field_violations) == 2
    assert caught.value.retry_after == 1.5


async def test_sync_and_async_iterators_raise_batchd_error(
    service: FakeBatchService, aclient: AsyncClient, client: Client
) -> None:
    service.errors["ListBatchItems"] = [
        Abort(grpc.StatusCode.NOT_FOUND, "no such batch"),
        Abort(grpc.StatusCode.NOT_FOUND, "no such batch"),
    ]
    with pytest.raises(BatchdError, match="NOT_FOUND: no such batch"):
        _ = [item async for item in aclient.items("x")]
    with pytest.raises(BatchdError, match="NOT_FOUND: no such batch"):
        await asyncio.to_thread(lambda: list(client.items("x")))


async def test_read_calls_are_retried_on_unavailable(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    # The client's channel retries idempotent calls (service config), so one
    # UNAVAILABLE costs nothing.
    service.errors["GetBatch"] = [Abort(grpc.StatusCode.UNAVAILABLE, "restarting")]
    batch = await aclient.get("b1")
    assert batch.batch_id == "b1"
    assert service.calls["GetBatch"] == 2


async def test_submit_is_not_retried(service: FakeBatchService, aclient: AsyncClient) -> None:
    service.errors["SubmitBatch"] = [Abort(grpc.StatusCode.UNAVAILABLE, "restarting")]
    with pytest.raises(BatchdError) as caught:
        await aclient.submit("noop", [("a", {})])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert service.calls["SubmitBatch"] == 1


@pytest.mark.slow
async def test_no_server_is_unavailable() -> None:
    async with AsyncClient("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(BatchdError) as caught:
            await client.get("b1")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
