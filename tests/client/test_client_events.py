"""watch_batches(): events with their cursors, a lost stream resumed after the last cursor
received (a heartbeat's too), errors other than UNAVAILABLE raised; async and blocking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import cast

import grpc
import pytest
from client.client_fakes import Abort, FakeBatchService

from batchd.client import (
    AsyncClient,
    BatchdError,
    BatchEvent,
    BatchEventType,
    BatchState,
    Client,
    WatchReconnect,
    WatchRetry,
)
from batchd.v1 import batch_service_pb2 as pb

FAST = WatchRetry(initial_backoff=0.001, max_backoff=0.01, max_retries=3)
UNAVAILABLE = Abort(grpc.StatusCode.UNAVAILABLE, "server going away")
GUARD = 10.0


def event(cursor: str, kind: int = pb.BATCH_EVENT_TYPE_CREATED) -> pb.WatchBatchesResponse:
    return pb.WatchBatchesResponse(
        event=pb.BatchEvent(
            cursor=cursor,
            type=pb.BatchEventType.ValueType(kind),
            batch_id="b1",
            state=1,  # type: ignore[arg-type]
            metadata={"team": "a"},
        ),
        cursor=cursor,
    )


def heartbeat(cursor: str) -> pb.WatchBatchesResponse:
    return pb.WatchBatchesResponse(heartbeat=True, cursor=cursor)


def scripts() -> list[list[pb.WatchBatchesResponse | Abort | str]]:
    return [
        [heartbeat("10-0"), event("11-0"), heartbeat("13-0"), UNAVAILABLE],
        [heartbeat("13-0"), event("14-0", pb.BATCH_EVENT_TYPE_FINISHED), UNAVAILABLE],
        [heartbeat("14-0"), Abort(grpc.StatusCode.FAILED_PRECONDITION, "trimmed")],
    ]


def cursors_asked(service: FakeBatchService) -> list[tuple[str, bool]]:
    return [
        (r.cursor, r.from_oldest) for r in service.requests if isinstance(r, pb.WatchBatchesRequest)
    ]


async def take(events: AsyncIterator[BatchEvent], count: int) -> list[BatchEvent]:
    async with asyncio.timeout(GUARD):
        return [await anext(events) for _ in range(count)]


async def test_a_lost_stream_resumes_after_the_last_cursor(
    aclient: AsyncClient, service: FakeBatchService
) -> None:
    service.events_scripts = scripts()
    lost: list[WatchReconnect] = []
    events = aclient.watch_batches(
        labels={"team": "a"},
        states=[BatchState.QUEUED],
        from_oldest=True,
        retry=FAST,
        on_reconnect=lost.append,
    )
    first, last = await take(events, 2)
    assert (first.cursor, first.type, first.metadata) == (
        "11-0",
        BatchEventType.CREATED,
        {"team": "a"},
    )
    assert (last.cursor, last.type) == ("14-0", BatchEventType.FINISHED)
    with pytest.raises(BatchdError) as caught:
        await take(events, 1)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION  # not retried
    # From the oldest at first; then after the last cursor, a heartbeat's included.
    assert cursors_asked(service) == [("", True), ("13-0", False), ("14-0", False)]
    assert [r.error.code for r in lost] == [grpc.StatusCode.UNAVAILABLE] * 2
    request = next(r for r in service.requests if isinstance(r, pb.WatchBatchesRequest))
    assert dict(request.labels) == {"team": "a"}
    assert [int(state) for state in request.states] == [int(BatchState.QUEUED)]


async def test_heartbeats_are_yielded_when_asked(
    aclient: AsyncClient, service: FakeBatchService
) -> None:
    service.events_scripts = scripts()
    events = aclient.watch_batches(heartbeats=True, retry=FAST)
    got = [(e.heartbeat, e.cursor) for e in await take(events, 3)]
    assert got == [(True, "10-0"), (False, "11-0"), (True, "13-0")]


def blocking_events(client: Client) -> Generator[BatchEvent, None, None]:
    return cast(Generator[BatchEvent, None, None], client.watch_batches(cursor="5-0", retry=FAST))


async def test_the_blocking_client_resumes_too(client: Client, service: FakeBatchService) -> None:
    service.events_scripts = scripts()

    def two() -> list[str]:
        events = blocking_events(client)
        try:
            return [next(events).cursor, next(events).cursor]
        finally:
            events.close()

    assert await asyncio.wait_for(asyncio.to_thread(two), GUARD) == ["11-0", "14-0"]
    assert cursors_asked(service)[:2] == [("5-0", False), ("13-0", False)]
