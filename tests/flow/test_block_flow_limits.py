"""Flow limits hold per item for a handler that takes blocks: examples/greeter's
greet.bulk in worker subprocesses against a local bulk API (tests/support/bulk_peer.py),
which counts at the peer the elements in flight and when each arrived. Run with -s to
see the figures."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from support.bulk_peer import BulkPeer, running_bulk_peer
from support.faults import wait_for_handler
from support.flow_handlers import max_in_window
from support.processes import SUPPORT_DIR, ServiceProcess

from batchd.client import AsyncClient, BatchState

GREETER = Path(__file__).resolve().parents[2] / "examples" / "greeter"
WORKERS = 2


@pytest.fixture
def worker_env() -> Mapping[str, str]:
    return {
        "BATCHD_HANDLERS": "greeter.bulk:greet_bulk",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), str(GREETER)]),
        "BATCHD_LOG_LEVEL": "info",
    }


@pytest.fixture
async def peer() -> AsyncIterator[BulkPeer]:
    async with running_bulk_peer(hold=0.02) as peer:
        yield peer


async def run_batch(
    client: AsyncClient,
    workers: Callable[..., ServiceProcess],
    peer: BulkPeer,
    total: int,
    options: Mapping[str, object],
) -> None:
    for _ in range(WORKERS):
        workers()
    await wait_for_handler(client, "greet.bulk")
    items = ((f"p{i}", {"name": f"P{i}", "endpoint": peer.url}) for i in range(total))
    batch = (await client.upload("greet.bulk", items, options=dict(options))).batch
    async for _ in client.watch(batch.batch_id, min_interval=0.2):
        pass  # the watch ends with the batch
    done = await client.get(batch.batch_id)
    assert done.state == BatchState.COMPLETED
    assert done.counts.succeeded == total
    assert sorted(peer.keys) == sorted(f"{batch.batch_id}/p{i}" for i in range(total))


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_blocks_keep_max_concurrent_in_items_at_the_peer(
    client: AsyncClient, workers: Callable[..., ServiceProcess], peer: BulkPeer
) -> None:
    limit, total = 30, 600
    options = {"chunk_size": 100, "block_size": 20, "max_concurrent": limit}
    await run_batch(client, workers, peer, total, options)
    print(
        f"\nmax_concurrent {limit}, blocks of 20: peak {peer.peak} items, sizes {peer.sizes[:12]}"
    )
    assert peer.peak <= limit
    # A block starts with the slots free at that moment (it never waits to fill), so
    # under the limit how full blocks are depends on timing (20 and 10 alternate while a
    # worker holds the 30, smaller ones when several workers share them).
    assert 1 < max(peer.sizes) <= 20
    assert len(peer.sizes) < total / 2  # blocks, not items one by one (600 calls)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_blocks_keep_max_per_second_in_items_at_the_peer(
    client: AsyncClient, workers: Callable[..., ServiceProcess], peer: BulkPeer
) -> None:
    limit, burst, total = 100, 10, 400
    options = {"chunk_size": 100, "block_size": 50, "max_per_second": limit, "burst": burst}
    await run_batch(client, workers, peer, total, options)
    arrivals = sorted(peer.arrivals)
    rate = (total - 1) / (arrivals[-1] - arrivals[0])
    window = max_in_window(arrivals)
    print(
        f"\nmax_per_second {limit}: {rate:.1f} items/s, most in 1 s: {window}, "
        f"sizes {peer.sizes[:12]}"
    )
    assert abs(rate - limit) <= 0.1 * limit
    assert window <= limit * 1.05 + burst
    assert max(peer.sizes) > 1
