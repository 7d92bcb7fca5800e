"""Network partitions between batchd's processes and Redis, made by a TCP proxy that stops
forwarding (support.tcp_proxy): a worker cut off stops in time for the chunk's next
holder and rejoins when the link returns; a server cut off answers UNAVAILABLE, reports
NOT_SERVING and recovers by itself (docs/operations.md, "When Redis is unreachable or
full")."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.faults import wait_for_handler
from support.in_process_server import HOST, running_server
from support.processes import ServiceProcess, WorkerPool
from support.redis_server import RedisServer
from support.tcp_proxy import TcpProxy, proxy_to
from support.timeline_handler import NAME, Event, read_timeline

from batchd.client import AsyncClient, BatchdError, BatchState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

LEASE_TTL = 2.0
# The worker cut off waits this long for a reply before it drops the connection.
REDIS_TIMEOUT = 1.0
CHUNK_SIZE = 4
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def timeline(tmp_path: Path) -> Path:
    return tmp_path / "timeline.log"


@pytest.fixture
def worker_env(timeline: Path) -> Mapping[str, str]:
    return {
        "BATCHD_HANDLERS": "timeline_handler:handler",
        "BATCHD_TIMELINE_LOG": str(timeline),
        "BATCHD_LEASE_TTL": str(LEASE_TTL),
        "BATCHD_MAINTENANCE_INTERVAL": "0.5",
        "BATCHD_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
    }


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[TcpProxy]:
    async with proxy_to(private_redis.port) as running:
        yield running


async def wait_for_events(path: Path, enough: Callable[[list[Event]], bool]) -> list[Event]:
    """The timeline once `enough` of it is there (another process writes it: polled)."""
    async with asyncio.timeout(60):
        while not enough(events := read_timeline(path)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return events


async def run_to_end(client: AsyncClient, batch_id: str) -> BatchState:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.1):
        last = progress
    assert last is not None
    return last.state


def chunk_of(key: str) -> str:
    """ "<batch>/i<n>" → "<batch>#<chunk>"."""
    batch, custom_id = key.split("/")
    return f"{batch}#{int(custom_id[1:]) // CHUNK_SIZE}"


@pytest.mark.parametrize(
    ("ms", "total", "cut_after"),
    [
        # Items shorter than a lease: those in flight at the cut end there, unrecorded.
        (400, 40, ("end", 5)),
        # Items longer than a lease: those in flight at the cut are abandoned.
        (3000, 16, ("start", 3)),
    ],
    ids=["short-items", "long-items"],
)
async def test_a_worker_cut_off_stops_in_time_and_rejoins(
    ms: int,
    total: int,
    cut_after: tuple[str, int],
    client: AsyncClient,
    proxy: TcpProxy,
    workers: Callable[..., ServiceProcess],
    worker_env: Mapping[str, str],
    timeline: Path,
    tmp_path: Path,
) -> None:
    # One chunk job at a time: the cut then falls in the job's items, not between ARQ
    # taking a job and its claim reaching Redis (a job taken but not claimed waits for
    # its worker's return, or three leases: docs/operations.md, "When Redis is
    # unreachable or full"), which would change the timings measured here.
    env = {**worker_env, "BATCHD_WORKER_MAX_CHUNKS": "1"}
    # Three items at once for chunks of four: the cut falls inside a chunk.
    cut_off = WorkerPool(proxy.url(), tmp_path / "cut", env, concurrency=3)
    (tmp_path / "cut").mkdir()
    try:
        a = cut_off.start()
        await wait_for_handler(client, NAME)
        items = [(f"i{n}", {"ms": ms}) for n in range(total)]
        first = await client.submit(NAME, items, options={"chunk_size": CHUNK_SIZE})
        batch_id = first.batch.batch_id
        kind, count = cut_after
        await wait_for_events(timeline, lambda ev: sum(e.kind == kind for e in ev) >= count)

        proxy.blackhole()
        cut_at = time.time()
        b = workers(concurrency=8)  # the next holder, on a working link
        assert await run_to_end(client, batch_id) == BatchState.COMPLETED
        batch = await client.get(batch_id)
        assert batch.counts.succeeded == total  # each item counted once

        events = read_timeline(timeline)
        runs = Counter(e.key for e in events if e.kind == "end")
        assert set(runs) == {f"{batch_id}/i{n}" for n in range(total)}
        duplicates = sum(n - 1 for n in runs.values())
        # Only items whose attempt ended on the cut-off worker at most a flush interval
        # before the cut, or after it, can run again: their outcomes never reached Redis.
        late = {e.key for e in events if e.pid == a.pid and e.kind == "end" and e.at > cut_at - 0.5}
        again = {key for key, n in runs.items() if n > 1}
        assert again <= late
        # The cut-off worker stops each chunk before its next holder starts one of its items.
        last_of_a: dict[str, float] = defaultdict(float)
        first_of_b: dict[str, float] = {}
        for e in events:
            if e.pid == a.pid:
                last_of_a[chunk_of(e.key)] = max(last_of_a[chunk_of(e.key)], e.at)
            elif e.kind == "start":
                first_of_b.setdefault(chunk_of(e.key), e.at)
        overlaps = {c: last_of_a[c] - at for c, at in first_of_b.items() if c in last_of_a}
        assert all(gap <= 0 for gap in overlaps.values()), overlaps
        shared = (
            f"{-max(overlaps.values()):.2f} s between the cut-off worker's last act in a "
            "chunk and its next holder's first"
            if overlaps
            else "no chunk begun by both"
        )
        abandoned = sum(e.kind == "cancel" and e.pid == a.pid for e in events)

        # The other worker leaves; work submitted meanwhile waits for the cut-off one.
        assert b.terminate() == 0
        second = await client.submit(NAME, [(f"j{n}", {"ms": 10}) for n in range(8)])
        restored_at = time.time()
        proxy.forward()
        later = await wait_for_events(
            timeline, lambda ev: any(e.key.startswith(second.batch.batch_id) for e in ev)
        )
        rejoined = next(e.at for e in later if e.key.startswith(second.batch.batch_id))
        assert await run_to_end(client, second.batch.batch_id) == BatchState.COMPLETED
        # What the cut-off worker recorded on its return changed no count.
        assert (await client.get(batch_id)).counts.succeeded == total
        print(
            f"\nworker partition, items of {ms} ms: {duplicates} items ran twice, "
            f"{abandoned} attempts abandoned, {shared}; first item "
            f"{rejoined - restored_at:.2f} s after the link returned"
        )
    finally:
        cut_off.stop()


async def health_status(stub: health_pb2_grpc.HealthStub) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    reply = await stub.Check(request, timeout=5)  # type: ignore[attr-defined]
    status: int = reply.status
    return status


async def wait_status(stub: health_pb2_grpc.HealthStub, wanted: int) -> None:
    """Follows the health service's Watch stream until it says `wanted`."""
    call = stub.Watch(health_pb2.HealthCheckRequest(service=""))  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(30):
            async for reply in call:
                if reply.status == wanted:
                    return
    finally:
        call.cancel()


@pytest.mark.parametrize("how", ["blackhole", "reset"])
async def test_a_server_cut_off_answers_unavailable_and_recovers(proxy: TcpProxy, how: str) -> None:
    # No retry policy on the channel: each call's own answer is what is measured.
    async with (
        running_server(proxy.url(), redis_timeout=REDIS_TIMEOUT) as server,
        grpc.aio.insecure_channel(f"{HOST}:{server.port}") as channel,
        AsyncClient(channel=channel) as client,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        assert await health_status(health) == SERVING
        listed = await client.list_page()

        getattr(proxy, how)()
        cut_at = time.monotonic()
        with pytest.raises(BatchdError) as refused:
            await client.list_page()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        unavailable_after = time.monotonic() - cut_at
        assert unavailable_after < REDIS_TIMEOUT + 2
        await wait_status(health, NOT_SERVING)
        not_serving_after = time.monotonic() - cut_at

        proxy.forward()
        restored_at = time.monotonic()
        await wait_status(health, SERVING)
        serving_after = time.monotonic() - restored_at
        assert (await client.list_page()).items == listed.items
        print(
            f"\nserver partition ({how}): UNAVAILABLE after {unavailable_after:.2f} s, "
            f"NOT_SERVING after {not_serving_after:.2f} s, SERVING "
            f"{serving_after:.2f} s after the link returned"
        )


async def test_a_server_stopped_while_cut_off(proxy: TcpProxy) -> None:
    async with running_server(proxy.url(), redis_timeout=REDIS_TIMEOUT) as server:
        async with (
            grpc.aio.insecure_channel(f"{HOST}:{server.port}") as channel,
            AsyncClient(channel=channel) as client,
        ):
            await client.list_page()
            proxy.blackhole()
            with pytest.raises(BatchdError):
                await client.list_page()
        started = time.monotonic()
    # Stopped during the outage: promptly, every Redis connection closed (an unclosed
    # one is a ResourceWarning, an error under the test settings).
    assert time.monotonic() - started < 10
