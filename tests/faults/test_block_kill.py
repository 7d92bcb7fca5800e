"""A worker SIGKILLed with a block in flight loses nothing: another worker takes its
chunks over and runs their items again, the killed block's among them (at least once,
never lost). examples/greeter's greet.bulk against a local bulk API that holds its
answers until the worker is dead."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from support.bulk_peer import running_bulk_peer
from support.faults import wait_for_handler
from support.processes import SUPPORT_DIR, ServiceProcess

from batchd.client import AsyncClient, BatchState, ItemState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

GREETER = Path(__file__).resolve().parents[2] / "examples" / "greeter"


@pytest.fixture
def worker_env(worker_env: Mapping[str, str]) -> Mapping[str, str]:
    """The faults' worker environment (short leases), serving greet.bulk."""
    return {
        **worker_env,
        "BATCHD_HANDLERS": "greeter.bulk:greet_bulk",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), str(GREETER)]),
    }


# Deadlines for a hang, not speed targets: two cores shared with other test runs take
# several times longer than an idle machine.
@pytest.mark.timeout(240)
async def test_a_worker_killed_mid_block_loses_nothing(
    client: AsyncClient, workers: Callable[..., ServiceProcess]
) -> None:
    total = 200
    async with running_bulk_peer() as peer:
        peer.open.clear()  # every request waits: the first block stays in flight
        first = workers()
        await wait_for_handler(client, "greet.bulk")
        items = [(f"p{i}", {"name": f"P{i}", "endpoint": peer.url}) for i in range(total)]
        options = {"chunk_size": 100, "block_size": 50, "retry_policy": {"min_backoff": 0.05}}
        batch_id = (await client.upload("greet.bulk", items, options=options)).batch.batch_id
        async with asyncio.timeout(60):
            await peer.received.wait()
        in_flight = peer.in_flight
        assert 0 < in_flight <= 100
        first.kill()  # SIGKILL, a block's request unanswered
        peer.open.set()
        workers()
        async with asyncio.timeout(120):
            async for progress in client.watch(batch_id, min_interval=0.1):
                last = progress
        assert last.state == BatchState.COMPLETED
        states = Counter([item.state async for item in client.items(batch_id, page_size=1000)])
        assert states == {ItemState.SUCCEEDED: total}
        sent = Counter(peer.keys)
        assert set(sent) == {f"{batch_id}/p{i}" for i in range(total)}
        # What the dead worker had in flight ran again (the peer says 409: duplicate).
        assert sum(1 for count in sent.values() if count >= 2) >= min(in_flight, 50)
