"""Uploads that start early, end to end — real gRPC server, real worker, private Redis:
with `start_early` the batch exists from the header on and its items run while the
stream still brings more; a stream that breaks off, or is refused part-way, leaves the
batch CANCELLED with what ran kept and its request_id free; the header's count holds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import timestamp_pb2
from support import processes
from support.faults import wait_for_handler
from support.polling import poll
from support.rich_status import violations

from batchd.cli.main import main as cli
from batchd.client import AsyncClient, Batch, BatchdError, BatchState
from batchd.core.config import Settings
from batchd.server.app import BatchdServer
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub

Request = batch_service_pb2.UploadBatchRequest
CHUNK = 100


@pytest.fixture
async def stub(server: BatchdServer, client: AsyncClient) -> AsyncIterator[Stub]:
    """A raw stub of the e2e server (whose worker `client` starts), for streams that
    stop where a test says."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield batch_service_pb2_grpc.BatchServiceStub(channel)


def header(batch_id: str, count: int, **fields: object) -> Request:
    fields.setdefault("options", batch_pb2.BatchOptions(chunk_size=CHUNK))
    return Request(
        header=batch_service_pb2.UploadBatchHeader(
            handler="noop",
            batch_id=batch_id,
            start_early=True,
            item_count=count,
            **fields,  # type: ignore[arg-type]
        )
    )


def items(first: int, last: int, ids: Iterable[str] | None = None) -> Request:
    names = ids if ids is not None else (f"item-{i}" for i in range(first, last))
    part = [batch_pb2.Item(custom_id=name, params_json=b"{}") for name in names]
    return Request(items=batch_service_pb2.UploadBatchItems(items=part))


def end(count: int) -> Request:
    return Request(end=batch_service_pb2.UploadBatchEnd(item_count=count))


class Stream:
    """An UploadBatch call whose messages the test sends one by one."""

    def __init__(self, stub: Stub) -> None:
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.call = stub.UploadBatch(self._requests())

    async def _requests(self) -> AsyncIterator[Request]:
        while (message := await self._queue.get()) is not None:
            yield message

    def send(self, *messages: Request) -> None:
        for message in messages:
            self._queue.put_nowait(message)

    def finish(self, count: int) -> None:
        """Sends the end message and closes the stream."""
        self.send(end(count))
        self._queue.put_nowait(None)


async def batch_where(client: AsyncClient, batch_id: str, ready: object) -> Batch:
    """The batch, once `ready(batch)` holds."""

    async def probe() -> Batch | None:
        try:
            batch = await client.get(batch_id)
        except BatchdError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:  # not yet: the header is on its way
                raise
            return None
        return batch if ready(batch) else None  # type: ignore[operator]

    return await poll(probe)


def new_id() -> str:
    return f"early-{uuid.uuid4().hex[:8]}"


async def test_items_run_while_the_stream_brings_more(
    stub: Stub, client: AsyncClient, server: BatchdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch_id = new_id()
    stream = Stream(stub)
    stream.send(header(batch_id, 300), items(0, 100))
    # The first 100 ran before the rest was sent: nothing but the early start runs them.
    running = await batch_where(client, batch_id, lambda b: b.counts.succeeded == 100)
    assert running.uploading
    assert running.total_items == 300
    assert running.state == BatchState.RUNNING
    target = f"127.0.0.1:{server.port}"
    assert await asyncio.to_thread(cli, ["--target", target, "get", batch_id]) == 0
    assert "uploading   yes: items are still coming" in capsys.readouterr().out
    stream.send(items(100, 300))
    stream.finish(300)
    response = await stream.call
    assert response.batch.batch_id == batch_id
    assert response.batch.total_items == 300
    assert not response.batch.uploading
    done = await batch_where(client, batch_id, lambda b: b.state == BatchState.COMPLETED)
    assert done.counts.succeeded == 300
    assert not done.uploading


async def test_a_broken_stream_cancels_the_batch_and_keeps_what_came(
    stub: Stub, client: AsyncClient
) -> None:
    batch_id, request_id = new_id(), uuid.uuid4().hex
    stream = Stream(stub)
    stream.send(header(batch_id, 500, request_id=request_id), items(0, 100))
    await batch_where(client, batch_id, lambda b: b.counts.succeeded == 100)
    await client.pause(batch_id)  # the next chunks come but do not run
    stream.send(items(100, 250))  # chunk 1 appended, half of chunk 2 held by the server
    await batch_where(client, batch_id, lambda b: b.counts.pending == 400)
    stream.call.cancel()  # the client goes away mid-stream
    with pytest.raises(asyncio.CancelledError):
        await stream.call
    # What came in full chunks stays (items 0-199): what ran, and the rest cancelled;
    # the items that never came leave the batch.
    over = await batch_where(client, batch_id, lambda b: b.state == BatchState.CANCELLED)
    assert over.total_items == 200
    assert (over.counts.succeeded, over.counts.cancelled) == (100, 100)
    assert not over.uploading
    listed = {item.custom_id: item.state.name async for item in client.items(batch_id)}
    assert listed == {f"item-{i}": "SUCCEEDED" if i < 100 else "CANCELLED" for i in range(200)}
    # The request_id is free again: a retry makes a new batch rather than a replay.
    again = await client.upload(
        "noop", [(f"item-{i}", {}) for i in range(5)], request_id=request_id
    )
    assert not again.replayed
    assert again.batch.batch_id != batch_id


DUPLICATE = ["new-0", "item-7", *(f"new-{i}" for i in range(2, 50))]


def with_bad_params(message: Request, index: int) -> Request:
    message.items.items[index].params_json = b"{"
    return message


@pytest.mark.parametrize(
    ("sent", "field"),
    [
        pytest.param([items(0, 120), end(120)], "item_count", id="fewer"),
        pytest.param([items(0, 150), items(150, 151)], "items[150]", id="more"),
        pytest.param(
            [items(0, 100), items(0, 50, DUPLICATE), end(150)],
            "items[101].custom_id",
            id="duplicate",
        ),
        # The first chunk is appended as soon as it is checked, before the rest of its
        # message: a bad item past it leaves it.
        pytest.param(
            [with_bad_params(items(0, 150), 120)], "items[120].params_json", id="bad-item"
        ),
    ],
)
async def test_a_refused_stream_says_why_and_cancels_the_batch(
    stub: Stub, client: AsyncClient, sent: list[Request], field: str
) -> None:
    batch_id = new_id()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UploadBatch(iter([header(batch_id, 150), *sent]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(refused.value)
    # The first chunk came whole (it ran, or was cancelled before it could); nothing
    # after it stays.
    over = await batch_where(client, batch_id, lambda b: b.state == BatchState.CANCELLED)
    assert over.total_items == over.counts.succeeded + over.counts.cancelled == 100
    assert not over.uploading


async def test_cancelling_the_batch_ends_its_upload(stub: Stub, client: AsyncClient) -> None:
    batch_id = new_id()
    stream = Stream(stub)
    stream.send(header(batch_id, 400), items(0, 100))
    await batch_where(client, batch_id, lambda b: b.counts.succeeded == 100)
    await client.cancel(batch_id)
    stream.send(items(100, 400))
    stream.finish(400)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "takes no more items" in (refused.value.details() or "")
    over = await batch_where(client, batch_id, lambda b: b.state == BatchState.CANCELLED)
    assert (over.total_items, over.counts.succeeded) == (100, 100)
    assert not over.uploading


async def test_a_window_that_closes_mid_upload_ends_the_batch(
    stub: Stub, client: AsyncClient
) -> None:
    """The completion window closes while items are still coming: the batch ends as any
    expired batch does (COMPLETED, its unfinished items EXPIRED) with the chunks that
    came, and the stream is refused from then on."""
    batch_id = new_id()
    stream = Stream(stub)
    window = batch_pb2.BatchOptions(chunk_size=CHUNK)
    window.completion_window.FromSeconds(2)
    stream.send(header(batch_id, 1000, options=window), items(0, 100))
    await batch_where(client, batch_id, lambda b: b.counts.succeeded == 100)
    await client.pause(batch_id)
    stream.send(items(100, 200))
    await batch_where(client, batch_id, lambda b: b.counts.pending == 900)
    over = await batch_where(client, batch_id, lambda b: b.state == BatchState.COMPLETED)
    assert over.total_items == 200
    assert (over.counts.succeeded, over.counts.expired) == (100, 100)
    stream.send(items(200, 300))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED and takes no more items" in (refused.value.details() or "")
    assert not (await client.get(batch_id)).uploading


async def test_header_errors_create_nothing(stub: Stub, client: AsyncClient) -> None:
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    for request, code, field in [
        (header(new_id(), 0), grpc.StatusCode.INVALID_ARGUMENT, "item_count"),
        (header(new_id(), 5, start_time=later), grpc.StatusCode.INVALID_ARGUMENT, "start_early"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UploadBatch(iter([request, items(0, 5), end(5)]))
        assert refused.value.code() == code
        assert field in violations(refused.value)
        batch_id = request.header.batch_id
        assert not [b async for b in client.list() if b.batch_id == batch_id]
    batch_id = new_id()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UploadBatch(iter([header(batch_id, 10**9), items(0, 5)]))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most" in (refused.value.details() or "")
    assert not [b async for b in client.list() if b.batch_id == batch_id]


async def test_a_replay_waits_for_the_original_upload_to_end(
    stub: Stub, client: AsyncClient
) -> None:
    batch_id, request_id = new_id(), uuid.uuid4().hex
    stream = Stream(stub)
    stream.send(header(batch_id, 200, request_id=request_id), items(0, 100))
    await batch_where(client, batch_id, lambda b: b.uploading)
    work: list[tuple[str, dict[str, object]]] = [(f"item-{i}", {}) for i in range(200)]
    with pytest.raises(BatchdError) as refused:
        await client.upload("noop", work, request_id=request_id)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "still being uploaded" in refused.value.message
    stream.send(items(100, 200))
    stream.finish(200)
    await stream.call
    again = await client.upload(
        "noop", work, request_id=request_id, options={"chunk_size": CHUNK}, start_early=True
    )
    assert (again.replayed, again.batch.batch_id) == (True, batch_id)


async def test_the_client_starts_early_and_replays(client: AsyncClient) -> None:
    request_id = uuid.uuid4().hex
    work: list[tuple[str, dict[str, object]]] = [(f"item-{i}", {}) for i in range(250)]
    first = await client.upload("noop", work, start_early=True, request_id=request_id)
    assert first.batch.total_items == 250
    assert not first.replayed
    again = await client.upload("noop", work, start_early=True, request_id=request_id)
    assert again.replayed
    assert again.batch.batch_id == first.batch.batch_id
    async for progress in client.watch(first.batch.batch_id, min_interval=0.05):
        last = progress
    assert (last.state, last.counts.succeeded, last.uploading) == (BatchState.COMPLETED, 250, False)
    with pytest.raises(ValueError, match="item_count"):
        await client.upload("noop", iter(work), start_early=True)


@pytest.mark.slow
async def test_a_batch_whose_server_dies_mid_upload_is_cancelled(
    settings: Settings, client: AsyncClient, free_port: int, tmp_path: Path
) -> None:
    """The upload's server is SIGKILLed: nobody will end its stream, so the maintenance
    sweep (here the e2e worker's) cancels the batch once the upload's lease lapses
    (twice BATCHD_UPLOAD_IDLE_TIMEOUT)."""
    env = {
        "BATCHD_REDIS_URL": settings.redis_url,
        "BATCHD_KEY_PREFIX": settings.key_prefix,
        "BATCHD_HOST": "127.0.0.1",
        "BATCHD_PORT": str(free_port),
        "BATCHD_UPLOAD_IDLE_TIMEOUT": "1",
    }
    doomed = processes.server(env, tmp_path / "server.log").start()
    try:
        async with (
            AsyncClient(f"127.0.0.1:{free_port}") as on_doomed,
            grpc.aio.insecure_channel(f"127.0.0.1:{free_port}") as channel,
        ):
            await wait_for_handler(on_doomed, "noop")
            batch_id = new_id()
            stream = Stream(batch_service_pb2_grpc.BatchServiceStub(channel))
            stream.send(header(batch_id, 1000), items(0, 300))
            await batch_where(client, batch_id, lambda b: b.counts.succeeded == 300)
            doomed.kill()
            stream.call.cancel()
        over = await batch_where(client, batch_id, lambda b: b.state == BatchState.CANCELLED)
        assert (over.total_items, over.counts.succeeded) == (300, 300)
        assert not over.uploading
    finally:
        doomed.stop()
