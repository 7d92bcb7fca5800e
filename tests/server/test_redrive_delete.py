"""RetryBatchItems and DeleteBatch at the edge: their errors and preconditions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from support.rich_status import violations

from batchd.v1 import batch_pb2, batch_service_pb2

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub


async def queued_batch(stub: Stub) -> str:
    items = [batch_pb2.Item(custom_id=f"d{i}", params_json=b'{"n":1}') for i in range(5)]
    response = await stub.SubmitBatch(
        batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=items)
    )
    return response.batch.batch_id


async def test_delete_needs_a_finished_batch(stub: Stub) -> None:
    batch_id = await queued_batch(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteBatch(batch_service_pb2.DeleteBatchRequest(batch_id=batch_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
    await stub.DeleteBatch(batch_service_pb2.DeleteBatchRequest(batch_id=batch_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBatch(batch_service_pb2.GetBatchRequest(batch_id=batch_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteBatch(batch_service_pb2.DeleteBatchRequest(batch_id=batch_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_retry_names_a_bad_custom_id(stub: Stub) -> None:
    batch_id = await queued_batch(stub)
    request = batch_service_pb2.RetryBatchItemsRequest(batch_id=batch_id, custom_ids=["d1", "x y"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RetryBatchItems(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "custom_ids[1]" in (caught.value.details() or "")


async def test_retry_names_every_bad_field_at_once(stub: Stub) -> None:
    batch_id = await queued_batch(stub)
    request = batch_service_pb2.RetryBatchItemsRequest(
        batch_id=batch_id, custom_ids=["d1", "x y", "d2", ""], request_id="a~b"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RetryBatchItems(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"custom_ids[1]", "custom_ids[3]", "request_id"}


async def test_retry_of_an_item_that_did_not_fail(stub: Stub) -> None:
    batch_id = await queued_batch(stub)
    request = batch_service_pb2.RetryBatchItemsRequest(batch_id=batch_id, custom_ids=["d3"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RetryBatchItems(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "custom_ids[0]" in (caught.value.details() or "")


async def test_retry_of_a_missing_batch(stub: Stub) -> None:
    request = batch_service_pb2.RetryBatchItemsRequest(batch_id="missing-batch")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RetryBatchItems(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_completion_window_is_checked_and_defaulted(stub: Stub) -> None:
    item = batch_pb2.Item(custom_id="a", params_json=b'{"n":1}')
    bad = batch_pb2.BatchOptions()
    bad.completion_window.FromSeconds(-5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(
            batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=[item], options=bad)
        )
    assert "options.completion_window" in (caught.value.details() or "")
    response = await stub.SubmitBatch(
        batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=[item])
    )
    assert response.batch.options.completion_window.seconds == 24 * 3600
