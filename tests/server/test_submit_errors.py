"""Every bad request gets its status code and a field violation naming the field, and
nothing of a rejected batch is stored."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from support.rich_status import violations

from batchd.core.domain import BatchOptions, HandlerSpec
from batchd.core.store import BatchStore
from batchd.v1 import batch_pb2, batch_service_pb2
from batchd.worker.handlers import http_request_handler
from batchd.worker.registry import specs

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub


def items(count: int, **params: Any) -> list[batch_pb2.Item]:
    body = json.dumps({"n": 1, **params}).encode()
    return [batch_pb2.Item(custom_id=f"i{i}", params_json=body) for i in range(count)]


async def submit_error(stub: Stub, **fields: Any) -> grpc.aio.AioRpcError:
    fields.setdefault("handler", "test.echo")
    fields.setdefault("items", items(3))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(batch_service_pb2.SubmitBatchRequest(**fields))
    return caught.value


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"handler": ""}, "handler"),
        ({"handler": "no.such.handler"}, "handler"),
        ({"items": []}, "items"),
        (
            {"items": [batch_pb2.Item(custom_id="bad id!", params_json=b'{"n":1}')]},
            "items[0].custom_id",
        ),
        (
            {"items": [batch_pb2.Item(custom_id="x" * 65, params_json=b'{"n":1}')]},
            "items[0].custom_id",
        ),
        (
            {"items": [*items(2), batch_pb2.Item(custom_id="i0", params_json=b'{"n":1}')]},
            "items[2].custom_id",
        ),
        ({"items": [batch_pb2.Item(custom_id="a", params_json=b"{nope")]}, "items[0].params_json"),
        ({"items": [batch_pb2.Item(custom_id="a", params_json=b"[1]")]}, "items[0].params_json"),
        ({"items": [batch_pb2.Item(custom_id="a", params_json=b'{"n":-1}')]}, "items[0].params.n"),
        ({"items": [batch_pb2.Item(custom_id="a", params_json=b'{"s":"x"}')]}, "items[0].params"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata['k']"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"batch_id": "not ok"}, "batch_id"),
        ({"options": batch_pb2.BatchOptions(chunk_size=10_001)}, "options.chunk_size"),
        ({"options": batch_pb2.BatchOptions(max_per_second=-1)}, "options.max_per_second"),
        ({"options": batch_pb2.BatchOptions(block_size=1001)}, "options.block_size"),
        # test.echo has no run_many: one item per call.
        ({"options": batch_pb2.BatchOptions(block_size=2)}, "options.block_size"),
    ],
)
async def test_invalid_submit_names_the_field(
    stub: Stub, store: BatchStore, fields: dict[str, Any], field: str
) -> None:
    batch_id = f"rejected-{uuid.uuid4().hex[:8]}"
    fields.setdefault("batch_id", batch_id)
    error = await submit_error(stub, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error), violations(error)
    assert not [k async for k in store.redis.scan_iter(match=f"*{batch_id}*")]


async def test_http_request_takes_json_or_body_not_both(stub: Stub, store: BatchStore) -> None:
    await store.publish_worker(
        f"test-{uuid.uuid4().hex}", specs({"http.request": http_request_handler()}), ttl=3600
    )
    url = "http://127.0.0.1:1/"

    def item(**params: Any) -> batch_pb2.Item:
        return batch_pb2.Item(
            custom_id="a", params_json=json.dumps({"url": url, **params}).encode()
        )

    error = await submit_error(
        stub, handler="http.request", items=[item(json={"a": 1}, body="text")]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(error)) == ["items[0].params.body"]
    for params in ({"json": {"a": 1}}, {"body": "text"}, {}):
        request = batch_service_pb2.SubmitBatchRequest(
            handler="http.request", items=[item(**params)]
        )
        submitted = await stub.SubmitBatch(request)
        await stub.CancelBatch(
            batch_service_pb2.CancelBatchRequest(batch_id=submitted.batch.batch_id)
        )


async def test_struct_params_are_validated_like_json(stub: Stub) -> None:
    item = batch_pb2.Item(custom_id="a")
    item.params.update({"n": "one"})
    error = await submit_error(stub, items=[item])
    assert "items[0].params.n" in violations(error)


async def test_many_bad_items_each_named(stub: Stub) -> None:
    bad = [batch_pb2.Item(custom_id=f"i{i}", params_json=b'{"n":-1}') for i in range(5)]
    error = await submit_error(stub, items=items(0) + bad)
    assert set(violations(error)) == {f"items[{i}].params.n" for i in range(5)}


async def test_unknown_batch_is_not_found(stub: Stub) -> None:
    for call in (
        stub.GetBatch(batch_service_pb2.GetBatchRequest(batch_id="missing")),
        stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id="missing")),
        stub.ListBatchItems(batch_service_pb2.ListBatchItemsRequest(batch_id="missing")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.WatchProgress(batch_service_pb2.WatchProgressRequest(batch_id="missing"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_taken_batch_id_already_exists(stub: Stub) -> None:
    batch_id = f"mine-{uuid.uuid4().hex[:8]}"
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo", items=items(3), batch_id=batch_id
    )
    first = await stub.SubmitBatch(request)
    assert first.batch.batch_id == batch_id
    request.items[0].custom_id = "different"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_request_id_replay_returns_the_original(stub: Stub) -> None:
    request_id = uuid.uuid4().hex
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo", items=items(20), request_id=request_id
    )
    first = await stub.SubmitBatch(request)
    again = await stub.SubmitBatch(request)
    assert again.replayed
    assert not first.replayed
    assert again.batch.batch_id == first.batch.batch_id
    request.items[5].params_json = b'{"n": 2}'
    error = await submit_error(
        stub, handler="test.echo", items=request.items, request_id=request_id
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violations(error)


async def test_request_id_replay_with_chosen_batch_id(stub: Stub) -> None:
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo",
        items=items(4),
        request_id=uuid.uuid4().hex,
        batch_id=f"chosen-{uuid.uuid4().hex[:8]}",
    )
    first = await stub.SubmitBatch(request)
    again = await stub.SubmitBatch(request)
    assert again.replayed
    assert again.batch.batch_id == first.batch.batch_id == request.batch_id


async def test_defaults_come_from_the_handler(stub: Stub) -> None:
    response = await stub.SubmitBatch(
        batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=items(20))
    )
    batch = response.batch
    assert batch.options.chunk_size == 7
    assert batch.options.retry_policy.max_attempts == 3
    assert batch.chunk_count == 3
    assert batch.total_items == 20
    assert batch.state == batch_pb2.BATCH_STATE_QUEUED
    assert batch.counts.pending == 20


# A handler that takes blocks, as a worker publishes one: its default block_size is 1 or
# more (0 says "one item per call").
BULK = HandlerSpec(
    name="test.bulk",
    description="Takes items in blocks.",
    params_schema={"type": "object"},
    default_options=BatchOptions(chunk_size=7, block_size=5),
)


@pytest.fixture(scope="module")
async def bulk_published(store: BatchStore) -> None:
    await store.publish_worker(f"test-bulk-{uuid.uuid4().hex}", [BULK], ttl=3600)


@pytest.mark.usefixtures("bulk_published")
async def test_block_size_defaults_to_the_handlers_and_stays_within_a_chunk(stub: Stub) -> None:
    async def block_size(handler: str, **options: Any) -> int:
        request = batch_service_pb2.SubmitBatchRequest(
            handler=handler, items=items(3), options=batch_pb2.BatchOptions(**options)
        )
        return (await stub.SubmitBatch(request)).batch.options.block_size

    assert await block_size("test.bulk") == 5
    assert await block_size("test.bulk", block_size=7) == 7
    assert await block_size("test.bulk", chunk_size=3) == 3  # the default, cut to the chunk
    assert await block_size("test.echo") == 0  # one item per call
    assert await block_size("test.echo", block_size=1) == 1
    error = await submit_error(
        stub, handler="test.bulk", options=batch_pb2.BatchOptions(chunk_size=4, block_size=5)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"options.block_size": "must not be above chunk_size (4)"}
    error = await submit_error(  # the handler's chunk_size, 7
        stub, handler="test.bulk", options=batch_pb2.BatchOptions(block_size=8)
    )
    assert violations(error) == {"options.block_size": "must not be above chunk_size (7)"}
    error = await submit_error(stub, options=batch_pb2.BatchOptions(block_size=2))
    assert "no run_many" in violations(error)["options.block_size"]
