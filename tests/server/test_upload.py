"""UploadBatch stores chunks as they arrive and commits only when the stream completes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from support.polling import poll

from batchd.core.store import BatchStore
from batchd.v1 import batch_pb2, batch_service_pb2

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub

Request = batch_service_pb2.UploadBatchRequest


def header(batch_id: str, **fields: object) -> Request:
    return Request(
        header=batch_service_pb2.UploadBatchHeader(
            handler="test.echo",
            batch_id=batch_id,
            **fields,  # type: ignore[arg-type]
        )
    )


def end(count: int) -> Request:
    return Request(end=batch_service_pb2.UploadBatchEnd(item_count=count))


def item_messages(total: int, per_message: int = 1000, start: int = 0) -> list[Request]:
    body = b'{"n":1}'
    messages = []
    for first in range(start, start + total, per_message):
        last = min(first + per_message, start + total)
        part = [batch_pb2.Item(custom_id=f"item-{i}", params_json=body) for i in range(first, last)]
        messages.append(Request(items=batch_service_pb2.UploadBatchItems(items=part)))
    return messages


async def keys_of(store: BatchStore, batch_id: str) -> list[bytes]:
    return [k async for k in store.redis.scan_iter(match=f"*{batch_id}*", count=1000)]


@pytest.mark.slow
async def test_upload_of_200000_items(stub: Stub, store: BatchStore) -> None:
    batch_id = f"up-{uuid.uuid4().hex[:8]}"
    chunk_size = batch_pb2.BatchOptions(chunk_size=1000)
    messages = [header(batch_id, options=chunk_size), *item_messages(200_000), end(200_000)]
    response = await stub.UploadBatch(iter(messages))
    batch = response.batch
    assert (batch.batch_id, batch.total_items, batch.chunk_count) == (batch_id, 200_000, 200)
    assert batch.counts.pending == 200_000
    stored = await store.get_batch(batch_id)
    assert stored.total_items == 200_000
    listed, _ = await store.list_items(batch_id, 3, "", [])
    assert [i.custom_id for i in listed] == ["item-0", "item-1", "item-2"]


async def test_broken_stream_leaves_nothing(stub: Stub, store: BatchStore) -> None:
    batch_id = f"broken-{uuid.uuid4().hex[:8]}"
    more = asyncio.Event()

    async def requests() -> AsyncIterator[Request]:
        yield header(batch_id, options=batch_pb2.BatchOptions(chunk_size=100))
        for message in item_messages(5_000):
            yield message
        await more.wait()  # the client hangs, then goes away

    call = stub.UploadBatch(requests())
    await poll(lambda: _has_keys(store, batch_id))  # chunks are being staged
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await poll(lambda: _has_no_keys(store, batch_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBatch(batch_service_pb2.GetBatchRequest(batch_id=batch_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_item_late_in_the_stream_rejects_all(stub: Stub, store: BatchStore) -> None:
    batch_id = f"late-{uuid.uuid4().hex[:8]}"
    messages = [header(batch_id), *item_messages(3000), end(3000)]
    messages[3].items.items[7].params_json = b'{"n":"x"}'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter(messages))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[2007].params.n" in (caught.value.details() or "")
    assert await keys_of(store, batch_id) == []


async def test_duplicate_id_across_messages_rejected(stub: Stub, store: BatchStore) -> None:
    batch_id = f"dup-{uuid.uuid4().hex[:8]}"
    messages = [header(batch_id), *item_messages(2000), *item_messages(1, start=5), end(2001)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter(messages))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[2000].custom_id" in (caught.value.details() or "")
    assert await keys_of(store, batch_id) == []


async def test_stream_without_end_commits_nothing(stub: Stub, store: BatchStore) -> None:
    """A client that breaks off can look like a clean end of stream: only the end
    message commits."""
    batch_id = f"noend-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter([header(batch_id), *item_messages(2500)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end" in (caught.value.details() or "")
    assert await keys_of(store, batch_id) == []


async def test_end_with_wrong_count_commits_nothing(stub: Stub, store: BatchStore) -> None:
    batch_id = f"count-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter([header(batch_id), *item_messages(2500), end(2400)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end.item_count" in (caught.value.details() or "")
    assert await keys_of(store, batch_id) == []


async def test_stream_without_header_is_invalid(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter(item_messages(10)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _has_keys(store: BatchStore, batch_id: str) -> bool | None:
    """True once the batch has keys in Redis (None until then: see poll)."""
    return True if await keys_of(store, batch_id) else None


async def _has_no_keys(store: BatchStore, batch_id: str) -> bool | None:
    """True once the batch has none left (None until then)."""
    return None if await keys_of(store, batch_id) else True
