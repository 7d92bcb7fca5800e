"""Params too deep or too large, and malformed messages, are INVALID_ARGUMENT naming the
field: through the client, through grpcurl (which encodes any depth a JSON request
has), and through a raw stub that sends what the client refuses."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import struct_pb2
from support.grpcurl import grpcurl_binary
from support.rich_status import violations

from batchd.client import AsyncClient, BatchdError
from batchd.server.app import BatchdServer
from batchd.server.decoding import _field
from batchd.v1 import batch_pb2, batch_service_pb2

if TYPE_CHECKING:
    from batchd.core.store import BatchStore
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub

SERVICE = "/batchd.v1.BatchService"
DEEP = "nested deeper than"


async def keys_of(store: BatchStore, batch_id: str) -> list[bytes]:
    return [k async for k in store.redis.scan_iter(match=f"*{batch_id}*", count=1000)]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def struct_bytes(levels: int) -> bytes:
    """A Struct nested `levels` deep, encoded by hand (protobuf would not build it)."""
    key = _field(1, b"a")  # FieldsEntry.key
    data = b""
    for _ in range(levels - 1):
        value = _field(5, data)  # Value.struct_value
        data = _field(1, key + _field(2, value))  # Struct.fields
    return data


def item_bytes(custom_id: str, params: bytes) -> bytes:
    return _field(1, custom_id.encode()) + _field(2, params)  # Item.custom_id, Item.params


def submit_bytes(batch_id: str, items: list[bytes]) -> bytes:
    header = batch_service_pb2.SubmitBatchRequest(handler="test.echo", batch_id=batch_id)
    return header.SerializeToString() + b"".join(_field(2, item) for item in items)


def raw_unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"{SERVICE}/{method}",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )


def json_item(custom_id: str, params: bytes) -> batch_pb2.Item:
    return batch_pb2.Item(custom_id=custom_id, params_json=params)


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        yield client


@pytest.mark.parametrize("levels", [33, 60, 2000])
@pytest.mark.parametrize("params_struct", [False, True])
async def test_client_refuses_deep_params_before_sending(
    client: AsyncClient, levels: int, params_struct: bool
) -> None:
    items: list[Any] = [("ok", {"n": 1}), ("deep", {"n": 1, "s": nested(levels)})]
    with pytest.raises(BatchdError) as caught:
        await client.submit("test.echo", items, params_struct=params_struct)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0].field == "items[1].params"
    assert DEEP in caught.value.field_violations[0].description


@pytest.mark.parametrize("levels", [33, 34, 60, 2000])
async def test_deep_struct_through_a_raw_stub(
    channel: grpc.aio.Channel, store: BatchStore, levels: int
) -> None:
    batch_id = f"deep-{uuid.uuid4().hex[:8]}"
    request = submit_bytes(
        batch_id,
        [
            batch_pb2.Item(custom_id="ok", params_json=b'{"n":1}').SerializeToString(),
            item_bytes("deep", struct_bytes(levels)),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_unary(channel, "SubmitBatch")(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert list(violations(caught.value)) == ["items[1].params"]
    assert await keys_of(store, batch_id) == []


@pytest.mark.parametrize("levels", [33, 60, 1024, 1025, 2000])
async def test_deep_params_json(stub: Stub, levels: int) -> None:
    params = b'{"n":1,"s":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo", items=[json_item("ok", b'{"n":1}'), json_item("deep", params)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert list(found) == ["items[1].params_json"]
    assert DEEP in found["items[1].params_json"]


async def test_the_shortest_params_json_too_deep_is_refused(stub: Stub) -> None:
    # 33 levels in as few bytes as JSON allows: short params skip the depth walk only
    # when they are too short to be this deep.
    params = b'{"":' + b"[" * 32 + b"]" * 32 + b"}"
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo", items=[json_item("deep", params)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(request)
    assert DEEP in violations(caught.value)["items[0].params_json"]


async def test_params_at_the_depth_limit_pass(stub: Stub) -> None:
    # 32 levels: the object itself and 31 arrays within it.
    params = b'{"n":1,"s":"x","t":' + b"[" * 31 + b"]" * 31 + b"}"
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo", items=[json_item("ok", params)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(request)
    # The schema refuses the extra property: the depth check let it through.
    assert list(violations(caught.value)) == ["items[0].params"]
    assert DEEP not in violations(caught.value)["items[0].params"]


async def test_deep_struct_in_an_upload_names_the_items_index(
    channel: grpc.aio.Channel, store: BatchStore
) -> None:
    batch_id = f"deep-up-{uuid.uuid4().hex[:8]}"
    header = batch_service_pb2.UploadBatchRequest(
        header=batch_service_pb2.UploadBatchHeader(handler="test.echo", batch_id=batch_id)
    )
    good = batch_service_pb2.UploadBatchRequest(
        items=batch_service_pb2.UploadBatchItems(
            items=[json_item(f"i{i}", b'{"n":1}') for i in range(3)]
        )
    )
    items_field = batch_service_pb2.UploadBatchRequest.DESCRIPTOR.fields_by_name["items"].number
    bad = _field(
        items_field,
        _field(1, json_item("x", b'{"n":1}').SerializeToString())
        + _field(1, item_bytes("deep", struct_bytes(60))),
    )
    upload = channel.stream_unary(
        f"{SERVICE}/UploadBatch",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    messages = [header.SerializeToString(), good.SerializeToString(), bad]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(iter(messages))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(caught.value)) == ["items[4].params"]
    assert await keys_of(store, batch_id) == []


async def test_garbage_is_invalid_argument_everywhere(channel: grpc.aio.Channel) -> None:
    for method in ("SubmitBatch", "GetBatch", "ListBatches"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_unary(channel, method)(b"\x0a\x05ab")  # a truncated field
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
    watch = channel.unary_stream(
        f"{SERVICE}/WatchProgress",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch(b"\x0a\x02\xff\xfe"):  # batch_id not UTF-8
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(caught.value)) == ["batch_id"]


async def test_params_larger_than_the_limit(stub: Stub) -> None:
    big = b'{"n":1,"s":"' + b"x" * (256 * 1024) + b'"}'
    struct = struct_pb2.Struct()
    struct.update({"n": 1, "s": "x" * (256 * 1024)})
    request = batch_service_pb2.SubmitBatchRequest(
        handler="test.echo",
        items=[
            json_item("ok", b'{"n":1}'),
            json_item("big", big),
            batch_pb2.Item(custom_id="big2", params=struct),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitBatch(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert found == {
        "items[1].params_json": f"at most {256 * 1024} bytes",
        "items[2].params": f"at most {256 * 1024} bytes",
    }


async def test_upload_message_with_too_many_items(stub: Stub, store: BatchStore) -> None:
    batch_id = f"many-{uuid.uuid4().hex[:8]}"
    header = batch_service_pb2.UploadBatchRequest(
        header=batch_service_pb2.UploadBatchHeader(handler="test.echo", batch_id=batch_id)
    )
    items = [json_item(f"i{i}", b'{"n":1}') for i in range(10_001)]
    message = batch_service_pb2.UploadBatchRequest(
        items=batch_service_pb2.UploadBatchItems(items=items)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadBatch(iter([header, message]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(caught.value)) == ["items.items"]
    assert await keys_of(store, batch_id) == []


async def grpcurl_submit(port: int, request: bytes) -> tuple[int, str, str]:
    """SubmitBatch through the bundled grpcurl (JSON in, grpcurl encodes the Struct;
    reflection tells it the types): its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        str(grpcurl_binary()),
        "-plaintext",
        "-format-error",
        "-d",
        "@",
        f"127.0.0.1:{port}",
        "batchd.v1.BatchService/SubmitBatch",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(request)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("levels", [60, 2000])
async def test_deep_params_through_grpcurl(server: BatchdServer, levels: int) -> None:
    deep = '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)  # json.dumps would recurse
    request = (
        '{"handler":"test.echo","items":[{"customId":"ok","params":{"n":1}},'
        f'{{"customId":"deep","params":{deep}}}]}}'
    )
    status, out, err = await grpcurl_submit(server.port, request.encode())
    assert status != 0, out
    error = json.loads(err)  # -format-error: the status as JSON, its details decoded
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0], error
    assert "items[1].params" in error["message"]
    assert DEEP in error["message"]
    for internal in ("Traceback", "RecursionError", "DecodeError", ".py", "Exception"):
        assert internal not in error["message"]
    fields = [v["field"] for d in error["details"] for v in d["field_violations"]]
    assert fields == ["items[1].params"]
