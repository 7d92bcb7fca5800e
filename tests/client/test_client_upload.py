"""Submitting, uploading and listing through both clients against a real grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from client.client_fakes import Abort, FakeBatchService, FakeServer, make_batch

from batchd.client import (
    AsyncClient,
    BatchdError,
    BatchOptions,
    BatchState,
    Client,
    ItemState,
)
from batchd.v1 import batch_pb2, batch_service_pb2

# A guard against a hang if streaming were broken, not a synchronisation.
GUARD = 10.0


async def test_submit_round_trip(service: FakeBatchService, aclient: AsyncClient) -> None:
    result = await aclient.submit(
        "noop",
        [{"custom_id": "a", "params": {"n": 1}}, ("b", {"n": 2})],
        options=BatchOptions(chunk_size=100),
        metadata={"team": "data"},
        request_id="req-1",
        batch_id="mine",
    )
    request = service.requests[-1]
    assert isinstance(request, batch_service_pb2.SubmitBatchRequest)
    assert [i.params_json for i in request.items] == [b'{"n":1}', b'{"n":2}']
    assert (request.request_id, request.batch_id) == ("req-1", "mine")
    assert result.replayed
    batch = result.batch
    assert (batch.batch_id, batch.handler, batch.state) == ("mine", "noop", BatchState.QUEUED)
    assert batch.total_items == 2
    assert batch.metadata == {"team": "data"}
    assert batch.options.chunk_size == 100
    assert batch.create_time == datetime.fromtimestamp(1_700_000_000, tz=UTC)


async def test_async_upload_streams_while_items_are_produced(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    pulled = 0

    async def items() -> AsyncIterator[dict[str, object]]:
        nonlocal pulled
        for i in range(1000):
            if i == 25:
                # Only a client that has already sent items gets past this point.
                await service.items_arrived.wait()
            pulled += 1
            yield {"custom_id": f"i{i}", "params": {"i": i}}

    result = await asyncio.wait_for(
        aclient.upload(
            "noop",
            items(),
            items_per_message=10,
            options={"chunk_size": 50},
            metadata={"k": "v"},
            request_id="r1",
            batch_id="up-1",
        ),
        GUARD,
    )
    upload = service.uploads[-1]
    assert upload.outcome == "completed"
    assert upload.header.handler == "noop"
    assert upload.header.options.chunk_size == 50
    assert dict(upload.header.metadata) == {"k": "v"}
    assert (upload.header.request_id, upload.header.batch_id) == ("r1", "up-1")
    assert all(m.WhichOneof("part") == "items" for m in upload.messages[1:-1])
    assert [len(m.items.items) for m in upload.item_messages] == [10] * 100
    assert upload.messages[-1].end.item_count == 1000
    assert [i.custom_id for i in upload.items] == [f"i{i}" for i in range(1000)]
    assert upload.items[7].params_json == b'{"i":7}'
    assert pulled == 1000
    assert result.batch.total_items == 1000
    assert result.batch.batch_id == "up-1"


async def test_sync_upload_streams_while_items_are_produced(
    service: FakeBatchService, client: Client
) -> None:
    def items() -> Iterator[tuple[str, dict[str, int]]]:
        for i in range(500):
            if i == 25 and not service.items_arrived_threadsafe.wait(GUARD):
                raise AssertionError("no items reached the server while the iterator ran")
            yield f"i{i}", {"i": i}

    result = await asyncio.to_thread(client.upload, "noop", items(), items_per_message=10)
    upload = service.uploads[-1]
    assert upload.outcome == "completed"
    assert len(upload.items) == 500
    assert result.batch.total_items == 500


class Boom(Exception):
    pass


async def test_async_upload_failing_iterator_cancels_the_stream(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    async def items() -> AsyncIterator[tuple[str, dict[str, int]]]:
        for i in range(100):
            if i == 30:
                await service.items_arrived.wait()
                raise Boom("source broke")
            yield f"i{i}", {}

    with pytest.raises(Boom):
        await aclient.upload("noop", items(), items_per_message=10)
    # The service was told to drop the upload before the stream ended.
    assert service.uploads[-1].outcome == "rejected"


async def test_sync_upload_failing_iterator_cancels_the_stream(
    service: FakeBatchService, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    def items() -> Iterator[tuple[str, dict[str, int]]]:
        for i in range(100):
            if i == 30:
                service.items_arrived_threadsafe.wait(GUARD)
                raise Boom("source broke")
            yield f"i{i}", {}

    with caplog.at_level(logging.DEBUG), pytest.raises(Boom):
        await asyncio.to_thread(client.upload, "noop", items(), items_per_message=10)
    assert service.uploads[-1].outcome == "rejected"
    # grpc never saw the exception, so it logged no traceback of its own.
    assert "Exception iterating requests" not in caplog.text


async def test_invalid_item_mid_stream_is_invalid_argument(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    def items() -> Iterator[object]:
        yield from ((f"i{i}", {}) for i in range(25))
        yield {"custom_id": "bad", "params": "not an object"}

    with pytest.raises(BatchdError) as caught:
        await aclient.upload("noop", items(), items_per_message=10)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["items[25].params"]
    assert service.uploads[-1].outcome == "rejected"


def endless() -> Iterator[tuple[str, dict[str, int]]]:
    i = 0
    while True:  # a test using it ends only if the client stops pulling
        yield f"i{i}", {}
        i += 1


HANDLER_NOT_SERVED = Abort(grpc.StatusCode.FAILED_PRECONDITION, "handler not served")


async def test_async_upload_rejected_early_stops_pulling_items(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.upload_reject = HANDLER_NOT_SERVED
    with pytest.raises(BatchdError) as caught:
        await aclient.upload("nope", endless(), items_per_message=100)
    # The service's own status, not the INTERNAL of a failed write.
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == "handler not served"
    assert service.uploads[-1].outcome == "aborted"


async def test_sync_upload_rejected_early_stops_pulling_items(
    service: FakeBatchService, client: Client
) -> None:
    service.upload_reject = HANDLER_NOT_SERVED
    with pytest.raises(BatchdError) as caught:
        await asyncio.to_thread(client.upload, "nope", endless(), items_per_message=100)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == "handler not served"


async def test_list_walks_every_page(service: FakeBatchService, aclient: AsyncClient) -> None:
    service.batches = [make_batch(f"b{i}") for i in range(5)]
    ids = [b.batch_id async for b in aclient.list(page_size=2, states=[BatchState.QUEUED])]
    assert ids == [f"b{i}" for i in range(5)]
    requests = [r for r in service.requests if isinstance(r, batch_service_pb2.ListBatchesRequest)]
    assert [r.page_token for r in requests] == ["", "2", "4"]
    assert [list(r.states) for r in requests] == [[batch_pb2.BATCH_STATE_QUEUED]] * 3
    page = await aclient.list_page(page_size=3)
    assert [b.batch_id for b in page.items] == ["b0", "b1", "b2"]
    assert page.next_page_token == "3"


async def test_sync_list_items_cancel_handlers(service: FakeBatchService, client: Client) -> None:
    service.batches = [make_batch(f"b{i}") for i in range(3)]
    service.items = [
        batch_pb2.BatchItem(custom_id=f"i{i}", index=i, state=state)
        for i, state in enumerate([batch_pb2.ITEM_STATE_SUCCEEDED, batch_pb2.ITEM_STATE_FAILED] * 3)
    ]
    service.handlers = [batch_pb2.HandlerInfo(name="noop", live_workers=2)]

    def run() -> tuple[list[str], list[str], BatchState, list[str]]:
        batches = [b.batch_id for b in client.list(page_size=1)]
        failed = [i.custom_id for i in client.items("b0", states=[ItemState.FAILED], page_size=2)]
        cancelled = client.cancel("b0").state
        handlers = [h.name for h in client.handlers()]
        return batches, failed, cancelled, handlers

    batches, failed, cancelled, handlers = await asyncio.to_thread(run)
    assert batches == ["b0", "b1", "b2"]
    assert failed == ["i1", "i3", "i5"]
    assert cancelled is BatchState.CANCELLING
    assert handlers == ["noop"]


async def test_retry_and_delete(
    service: FakeBatchService, aclient: AsyncClient, client: Client
) -> None:
    result = await aclient.retry("b1", ["i1", "i3"], request_id="again-1")
    request = service.requests[-1]
    assert isinstance(request, batch_service_pb2.RetryBatchItemsRequest)
    assert (request.batch_id, list(request.custom_ids), request.request_id) == (
        "b1",
        ["i1", "i3"],
        "again-1",
    )
    assert (result.batch.state, result.requeued, result.replayed) == (BatchState.RUNNING, 2, True)
    await aclient.delete("b1")
    assert service.calls["DeleteBatch"] == 1
    service.errors["DeleteBatch"] = [Abort(grpc.StatusCode.FAILED_PRECONDITION, "still running")]
    with pytest.raises(BatchdError, match="FAILED_PRECONDITION: still running"):
        await asyncio.to_thread(client.delete, "b2")
    every = await asyncio.to_thread(client.retry, "b2")
    assert every.requeued == 2
    assert every.replayed is False


async def test_async_items_and_handlers(service: FakeBatchService, aclient: AsyncClient) -> None:
    service.items = [batch_pb2.BatchItem(custom_id=f"i{i}", index=i) for i in range(250)]
    service.handlers = [batch_pb2.HandlerInfo(name="noop", live_workers=1)]
    service.handlers[0].params_schema.update({"type": "object"})
    items = [i.index async for i in aclient.items("b", page_size=100)]
    assert items == list(range(250))
    (handler,) = await aclient.handlers()
    assert handler.params_schema == {"type": "object"}
    assert handler.live_workers == 1


async def test_client_keeps_a_channel_it_was_given(server: FakeServer) -> None:
    channel = grpc.aio.insecure_channel(server.target)
    async with AsyncClient(channel=channel) as client:
        assert (await client.get("x")).batch_id == "x"
    # Still open: the caller owns it.
    async with AsyncClient(channel=channel) as client:
        assert (await client.get("y")).batch_id == "y"
    await channel.close()


def test_sync_client_needs_no_event_loop() -> None:
    # Constructing and closing without a server is fine and does not block.
    with Client("127.0.0.1:1") as client:
        assert client is not None
