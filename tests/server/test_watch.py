"""WatchProgress: a snapshot at once, heartbeats while nothing changes, the terminal
snapshot, then OK."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support.polling import poll

from batchd.core.gc_tuning import YOUNG_PER_STREAM
from batchd.core.store import BatchStore
from batchd.core.throttle import buckets_for
from batchd.server.app import BatchdServer
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub as Stub


async def queued_batch(stub: Stub, count: int = 30) -> str:
    items = [batch_pb2.Item(custom_id=f"w{i}", params_json=b'{"n":1}') for i in range(count)]
    response = await stub.SubmitBatch(
        batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=items)
    )
    return response.batch.batch_id


async def read_to_end(call: Any) -> list[batch_service_pb2.WatchProgressResponse]:
    """The rest of a stream already read with read(): the two APIs may not be mixed."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


def watch_request(batch_id: str, heartbeat: float) -> batch_service_pb2.WatchProgressRequest:
    return batch_service_pb2.WatchProgressRequest(
        batch_id=batch_id,
        min_interval=duration_pb2.Duration(nanos=10_000_000),
        heartbeat_interval=duration_pb2.Duration(
            seconds=int(heartbeat), nanos=int(heartbeat % 1 * 1e9)
        ),
    )


async def test_snapshot_heartbeats_terminal_then_ok(stub: Stub) -> None:
    # No worker serves test.echo here: the batch stays QUEUED until it is cancelled.
    batch_id = await queued_batch(stub)
    call = stub.WatchProgress(watch_request(batch_id, heartbeat=0.05))
    first = await call.read()
    assert isinstance(first, batch_service_pb2.WatchProgressResponse)
    assert not first.heartbeat
    assert first.progress.state == batch_pb2.BATCH_STATE_QUEUED
    assert first.progress.counts.pending == first.progress.total_items == 30
    for _ in range(3):
        beat = await call.read()
        assert isinstance(beat, batch_service_pb2.WatchProgressResponse)
        assert beat.heartbeat
        assert beat.progress.counts == first.progress.counts

    await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
    rest = await read_to_end(call)
    last = rest[-1].progress
    assert last.state == batch_pb2.BATCH_STATE_CANCELLED
    assert last.counts.cancelled == 30
    assert last.HasField("end_time")
    assert await call.code() == grpc.StatusCode.OK


async def test_watching_a_finished_batch_ends_at_once(stub: Stub) -> None:
    batch_id = await queued_batch(stub, count=3)
    await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
    messages = [m async for m in stub.WatchProgress(watch_request(batch_id, heartbeat=5))]
    assert len(messages) == 1
    assert messages[0].progress.state == batch_pb2.BATCH_STATE_CANCELLED


async def test_the_terminal_snapshot_is_not_held_to_min_interval(stub: Stub) -> None:
    """A watcher asking for one snapshot a minute still hears at once that the batch
    ended: only the snapshots before the terminal one are spaced out."""
    batch_id = await queued_batch(stub)
    minute = duration_pb2.Duration(seconds=60)
    call = stub.WatchProgress(
        batch_service_pb2.WatchProgressRequest(
            batch_id=batch_id, min_interval=minute, heartbeat_interval=minute
        )
    )
    first = await call.read()
    assert isinstance(first, batch_service_pb2.WatchProgressResponse)
    assert first.progress.state == batch_pb2.BATCH_STATE_QUEUED
    await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
    async with asyncio.timeout(30):  # half the interval asked
        rest = await read_to_end(call)
    assert [m.progress.state for m in rest] == [batch_pb2.BATCH_STATE_CANCELLED]
    assert not rest[0].heartbeat
    assert await call.code() == grpc.StatusCode.OK


async def test_many_watchers_share_one_feed(stub: Stub) -> None:
    batch_id = await queued_batch(stub)
    calls = [stub.WatchProgress(watch_request(batch_id, heartbeat=5)) for _ in range(50)]
    for call in calls:
        first = await call.read()
        assert isinstance(first, batch_service_pb2.WatchProgressResponse)
    await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
    for call in calls:
        rest = await read_to_end(call)
        assert rest[-1].progress.state == batch_pb2.BATCH_STATE_CANCELLED


@pytest.mark.slow
async def test_thousands_of_watchers_arriving_at_once_are_all_served(
    stub: Stub, server: BatchdServer
) -> None:
    """3,000 watchers opened at once over 30 connections: every one gets its first and
    its terminal snapshot. (gRPC's own backlog guard used to cancel the calls that
    arrived while more than 1,000 waited to be taken up: ~700 of these.)"""
    batch_id = await queued_batch(stub)
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(30)
    ]
    try:
        stubs = [batch_service_pb2_grpc.BatchServiceStub(channel) for channel in channels]
        calls = [stubs[i % 30].WatchProgress(watch_request(batch_id, 60)) for i in range(3000)]
        firsts = await asyncio.gather(*(call.read() for call in calls), return_exceptions=True)
        assert [
            f for f in firsts if not isinstance(f, batch_service_pb2.WatchProgressResponse)
        ] == []

        # Meanwhile the server collects its youngest generation less often (batchd.core.
        # gc_tuning): each stream keeps young objects alive that every collection walks.
        async def threshold_raised() -> bool | None:
            return True if gc.get_threshold()[0] >= 3000 * YOUNG_PER_STREAM else None

        await poll(threshold_raised, within=10)
        await stub.CancelBatch(batch_service_pb2.CancelBatchRequest(batch_id=batch_id))
        ends = await asyncio.gather(*(read_to_end(call) for call in calls))
        assert {rest[-1].progress.state for rest in ends} == {batch_pb2.BATCH_STATE_CANCELLED}
        codes = await asyncio.gather(*(call.code() for call in calls))
        assert set(codes) == {grpc.StatusCode.OK}
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def test_invalid_batch_id_is_rejected(stub: Stub) -> None:
    call = stub.WatchProgress(batch_service_pb2.WatchProgressRequest(batch_id="no spaces"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
async def test_snapshots_show_the_effective_rate(stub: Stub, store: BatchStore) -> None:
    items = [batch_pb2.Item(custom_id=f"r{i}", params_json=b'{"n":1}') for i in range(3)]
    options = batch_pb2.BatchOptions(max_per_second=40, burst=4)
    response = await stub.SubmitBatch(
        batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=items, options=options)
    )
    batch_id = response.batch.batch_id
    call = stub.WatchProgress(watch_request(batch_id, heartbeat=0.05))
    first = await call.read()
    assert isinstance(first, batch_service_pb2.WatchProgressResponse)
    assert first.progress.effective_rate == 40
    # The downstream asks to slow down: the rate drops (x 0.7), and snapshots say so.
    batch = await store.get_batch(batch_id)
    await store.slow_down(buckets_for(store.keys, batch_id, batch.options)[-1])
    async with asyncio.timeout(5):
        while True:
            message = await call.read()
            assert isinstance(message, batch_service_pb2.WatchProgressResponse)
            if message.progress.effective_rate != 40:
                break
    assert 28 <= message.progress.effective_rate < 34  # and recovering, by 2/s a second
    call.cancel()
    unlimited = await queued_batch(stub, 2)
    call = stub.WatchProgress(watch_request(unlimited, heartbeat=0.05))
    first = await call.read()
    assert isinstance(first, batch_service_pb2.WatchProgressResponse)
    assert first.progress.effective_rate == 0
    call.cancel()
