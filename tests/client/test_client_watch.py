"""watch(): snapshots to the terminal one, reconnecting when the stream is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from client.client_fakes import (
    CLOSE_SLOWLY,
    HANG,
    Abort,
    FakeBatchService,
    FakeServer,
    WatchStep,
    progress,
)
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from batchd.client import (
    AsyncClient,
    BatchdError,
    BatchProgress,
    BatchState,
    Client,
    WatchReconnect,
    WatchRetry,
)
from batchd.client._watch import WatchSession

QUEUED = BatchState.QUEUED
RUNNING = BatchState.RUNNING
COMPLETED = BatchState.COMPLETED
CANCELLED = BatchState.CANCELLED

# Tiny backoff: these tests wait on the client's reconnects, not on a clock.
FAST = WatchRetry(initial_backoff=0.001, max_backoff=0.01, max_retries=3)
UNAVAILABLE = Abort(grpc.StatusCode.UNAVAILABLE, "server going away")
GUARD = 10.0


def dropped_then_resumed() -> list[list[WatchStep]]:
    return [
        [
            progress(QUEUED, pending=10),
            progress(RUNNING, pending=6, running=2, succeeded=2),
            UNAVAILABLE,
        ],
        [
            progress(RUNNING, pending=6, running=2, succeeded=2),  # where it left off
            progress(RUNNING, pending=0, running=3, succeeded=6, failed=1),
            progress(COMPLETED, succeeded=9, failed=1),
        ],
    ]


def summary(snapshots: list[BatchProgress]) -> list[tuple[BatchState, int, bool]]:
    return [(p.state, p.counts.finished, p.heartbeat) for p in snapshots]


EXPECTED = [
    (QUEUED, 0, False),
    (RUNNING, 2, False),
    (RUNNING, 2, True),  # the resumed stream's first snapshot: nothing changed
    (RUNNING, 7, False),
    (COMPLETED, 10, False),
]


async def test_async_watch_reconnects_and_carries_on(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.watch_scripts = dropped_then_resumed()
    snapshots = [p async for p in aclient.watch("b1", min_interval=0.05, retry=FAST)]
    assert summary(snapshots) == EXPECTED
    assert len(service.watch_requests) == 2
    request = service.watch_requests[0]
    assert (request.batch_id, request.min_interval.ToTimedelta().total_seconds()) == ("b1", 0.05)
    assert not request.HasField("heartbeat_interval")
    final = snapshots[-1]
    assert final.state.is_terminal
    assert final.eta is not None
    assert final.eta.total_seconds() == 7
    assert final.items_per_second == 2.5


async def test_sync_watch_reconnects_and_carries_on(
    service: FakeBatchService, client: Client
) -> None:
    service.watch_scripts = dropped_then_resumed()
    snapshots = await asyncio.to_thread(lambda: list(client.watch("b1", retry=FAST)))
    assert summary(snapshots) == EXPECTED
    assert len(service.watch_requests) == 2


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_on_reconnect_is_told_of_each_lost_stream_before_the_wait(
    service: FakeBatchService, aclient: AsyncClient, client: Client, flavour: str
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=5, succeeded=5), UNAVAILABLE],
        [UNAVAILABLE],
        *dropped_then_resumed()[1:],
    ]
    told: list[tuple[int, grpc.StatusCode, str]] = []
    seen: list[int] = []
    snapshots: list[BatchProgress] = []

    def lost(reconnect: WatchReconnect) -> None:
        assert 0 < reconnect.delay <= FAST.max_backoff
        told.append((reconnect.attempt, reconnect.error.code, reconnect.error.message))
        seen.append(len(snapshots))

    if flavour == "async":
        snapshots.extend([p async for p in aclient.watch("b1", retry=FAST, on_reconnect=lost)])
    else:
        watch = client.watch("b1", retry=FAST, on_reconnect=lost)
        await asyncio.to_thread(lambda: snapshots.extend(watch))
    unavailable = (grpc.StatusCode.UNAVAILABLE, "server going away")
    assert told == [(1, *unavailable), (2, *unavailable)]
    assert snapshots[-1].state == COMPLETED
    if flavour == "sync":  # list.extend appends as the iterator yields
        assert seen == [1, 1]  # told while the watch waited, before any new snapshot


async def test_watch_survives_a_server_restart(
    service: FakeBatchService, server: FakeServer, aclient: AsyncClient
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=5, succeeded=5), HANG],
        [progress(RUNNING, pending=1, succeeded=9), progress(COMPLETED, succeeded=10)],
    ]
    retry = WatchRetry(initial_backoff=0.01, max_backoff=0.1, max_retries=50)
    snapshots = aclient.watch("b1", retry=retry)
    first = await asyncio.wait_for(anext(snapshots), GUARD)
    assert first.counts.succeeded == 5
    # The connection goes away under the open stream; a new server takes the port.
    await server.restart()
    rest = await asyncio.wait_for(_drain(snapshots), GUARD)
    assert [(p.state, p.counts.succeeded) for p in rest] == [(RUNNING, 9), (COMPLETED, 10)]
    assert len(service.watch_requests) == 2


async def _drain(snapshots: AsyncIterator[BatchProgress]) -> list[BatchProgress]:
    return [p async for p in snapshots]


async def test_watch_ends_at_the_terminal_snapshot_even_if_the_stream_stays_open(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=1), progress(CANCELLED, cancelled=10), HANG]
    ]
    snapshots = [p async for p in aclient.watch("b1", retry=FAST)]
    assert [p.state for p in snapshots] == [RUNNING, CANCELLED]
    # The client hung up: the server's stream was cancelled.
    await asyncio.wait_for(service.watch_cancelled.wait(), GUARD)


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_after_the_terminal_snapshot_the_service_ends_the_stream(
    service: FakeBatchService, aclient: AsyncClient, client: Client, flavour: str
) -> None:
    service.watch_scripts = [[progress(COMPLETED, succeeded=10), CLOSE_SLOWLY]]
    if flavour == "async":
        snapshots = [p async for p in aclient.watch("b1", retry=FAST)]
    else:
        snapshots = await asyncio.to_thread(lambda: list(client.watch("b1", retry=FAST)))
    assert [p.state for p in snapshots] == [COMPLETED]
    # The client waited for the service to end the stream rather than resetting it: a
    # service ending ten thousand watches at once pays for every reset.
    await asyncio.wait_for(service.watch_finished.wait(), GUARD)
    assert not service.watch_cancelled.is_set()


async def test_breaking_out_of_watch_cancels_the_stream(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.watch_scripts = [[progress(RUNNING, pending=10), HANG]]
    async for snapshot in aclient.watch("b1"):
        assert snapshot.state is RUNNING
        break
    await asyncio.wait_for(service.watch_cancelled.wait(), GUARD)


async def test_stream_closed_ok_before_the_end_reconnects(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=10)],  # OK without a terminal snapshot
        [progress(COMPLETED, succeeded=10)],
    ]
    snapshots = [p async for p in aclient.watch("b1", retry=FAST)]
    assert [p.state for p in snapshots] == [RUNNING, COMPLETED]
    assert len(service.watch_requests) == 2


async def test_reconnects_are_bounded(service: FakeBatchService, aclient: AsyncClient) -> None:
    service.watch_scripts = [[UNAVAILABLE] for _ in range(10)]
    with pytest.raises(BatchdError) as caught:
        _ = [p async for p in aclient.watch("b1", retry=FAST)]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "server going away"
    assert len(service.watch_requests) == 1 + FAST.max_retries


async def test_sync_reconnects_are_bounded(service: FakeBatchService, client: Client) -> None:
    service.watch_scripts = [[UNAVAILABLE] for _ in range(10)]
    with pytest.raises(BatchdError) as caught:
        await asyncio.to_thread(lambda: list(client.watch("b1", retry=FAST)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(service.watch_requests) == 1 + FAST.max_retries


async def test_each_snapshot_resets_the_retry_budget(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    # Five drops in a row would exhaust FAST; a snapshot between drops resets it.
    drops: list[list[WatchStep]] = [[progress(RUNNING, pending=10), UNAVAILABLE]] * 5
    service.watch_scripts = [*drops, [progress(COMPLETED, succeeded=10)]]
    snapshots = [p async for p in aclient.watch("b1", retry=FAST)]
    assert snapshots[-1].state is COMPLETED
    assert len(service.watch_requests) == 6


async def test_not_found_is_not_retried(service: FakeBatchService, aclient: AsyncClient) -> None:
    service.watch_scripts = [[Abort(grpc.StatusCode.NOT_FOUND, 'batch "b1" not found')]]
    with pytest.raises(BatchdError) as caught:
        _ = [p async for p in aclient.watch("b1", retry=FAST)]
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert len(service.watch_requests) == 1


async def test_retry_info_sets_the_reconnect_delay(
    service: FakeBatchService, aclient: AsyncClient
) -> None:
    retry_info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=1_000_000))
    service.watch_scripts = [
        [Abort(grpc.StatusCode.UNAVAILABLE, "draining", [retry_info])],
        [progress(COMPLETED, succeeded=10)],
    ]
    snapshots = [p async for p in aclient.watch("b1", retry=WatchRetry(initial_backoff=60))]
    assert [p.state for p in snapshots] == [COMPLETED]


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    policy = WatchRetry(initial_backoff=0.2, max_backoff=5.0, multiplier=2.0)
    for failures, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (20, 5.0)]:
        delay = policy.delay(failures)
        assert ceiling / 2 <= delay <= ceiling
    assert policy.delay(3, retry_after=2.5) == 2.5


def test_session_raises_after_the_last_retry() -> None:
    session = WatchSession("b1", WatchRetry(max_retries=2))
    error = BatchdError(grpc.StatusCode.UNAVAILABLE, "gone")
    session.backoff(error)
    session.backoff(error)
    with pytest.raises(BatchdError):
        session.backoff(error)
