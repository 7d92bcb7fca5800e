"""An upload stream that goes quiet, or lasts too long, ends DEADLINE_EXCEEDED, and its
staged items are gone by the time the caller hears of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from batchd.core.config import Settings
from batchd.core.store import BatchStore
from batchd.server.app import start_server
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

Request = batch_service_pb2.UploadBatchRequest


async def keys_of(store: BatchStore, batch_id: str) -> list[bytes]:
    return [k async for k in store.redis.scan_iter(match=f"*{batch_id}*", count=1000)]


def items(first: int, count: int) -> Request:
    return Request(
        items=batch_service_pb2.UploadBatchItems(
            items=[
                batch_pb2.Item(custom_id=f"i{i}", params_json=b'{"n":1}')
                for i in range(first, first + count)
            ]
        )
    )


@pytest.mark.parametrize(
    ("idle", "duration", "says"),
    [(0.5, 60.0, "upload_idle_timeout"), (60.0, 0.5, "max_upload_duration")],
)
async def test_a_stalled_upload_ends_and_leaves_nothing(
    redis_url: str, store: BatchStore, idle: float, duration: float, says: str
) -> None:
    settings = Settings(redis_url=redis_url, upload_idle_timeout=idle, max_upload_duration=duration)
    server = await start_server(settings, port=0, metrics_port=0)
    batch_id = f"stall-{uuid.uuid4().hex[:8]}"
    staged = asyncio.Event()
    never = asyncio.Event()

    async def requests() -> AsyncIterator[Request]:
        header = batch_service_pb2.UploadBatchHeader(
            handler="test.echo", batch_id=batch_id, options=batch_pb2.BatchOptions(chunk_size=10)
        )
        yield Request(header=header)
        yield items(0, 50)
        staged.set()
        await never.wait()  # the client stops sending, and stays

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = batch_service_pb2_grpc.BatchServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.UploadBatch(requests())
            assert staged.is_set()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert says in (caught.value.details() or "")
            assert await keys_of(store, batch_id) == []
    finally:
        await server.stop(grace=0)
