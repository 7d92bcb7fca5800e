"""Nothing lost, nothing counted twice: 20,000 items with transient failures while
workers are SIGKILLed and restarted every second."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from support.faults import applied, rng, wait_for_handler
from support.processes import ServiceProcess

from batchd.client import AsyncClient, BatchState, ItemState

# A deadline for a hang, not a speed target: two cores shared with other test runs
# take several times longer than an idle machine.
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

ITEMS = 20_000
KILLS = 10


async def test_workers_killed_every_second(
    client: AsyncClient, workers: Callable[..., ServiceProcess], chaos_log: Path
) -> None:
    pool = [workers() for _ in range(3)]
    await wait_for_handler(client, "chaos.append")
    items = ((f"c{i}", {"ms": 15, "fail_rate": 0.1}) for i in range(ITEMS))
    retry = {"max_attempts": 20, "min_backoff": 0.05, "max_backoff": 0.5}
    submitted = await client.upload(
        "chaos.append", items, options={"chunk_size": 200, "retry_policy": retry}
    )
    batch_id = submitted.batch.batch_id

    killed_pids: set[int] = set()
    chooser = rng()
    started = time.monotonic()
    while len(killed_pids) < KILLS:
        await asyncio.sleep(1.0)  # the kill schedule, not a synchronisation
        batch = await client.get(batch_id)
        assert batch.state in (BatchState.QUEUED, BatchState.RUNNING), (
            f"the batch finished after {len(killed_pids)} kills; make it longer"
        )
        victim = chooser.randrange(len(pool))
        killed_pids.add(pool[victim].pid)
        pool[victim].kill()
        pool[victim] = workers()

    last = None
    async for progress in client.watch(batch_id, min_interval=0.2):
        c = progress.counts
        assert c.pending + c.claimed + c.running + c.finished == ITEMS
        last = progress
    assert last is not None
    assert last.state == BatchState.COMPLETED
    elapsed = time.monotonic() - started

    # Every item in exactly one terminal state: succeeded.
    outcomes = [item async for item in client.items(batch_id, page_size=1000)]
    assert len(outcomes) == ITEMS
    assert Counter(o.state for o in outcomes) == {ItemState.SUCCEEDED: ITEMS}
    assert last.counts.succeeded == ITEMS

    # Each effect applied once, but for items a killed worker had in hand.
    applications = applied(chaos_log)
    keys = Counter(key for key, _ in applications)
    assert set(keys) == {f"{batch_id}/c{i}" for i in range(ITEMS)}
    duplicates = {key for key, n in keys.items() if n > 1}
    for key in duplicates:
        by = [pid for k, pid in applications if k == key]
        assert all(pid in killed_pids for pid in by[:-1]), (key, by, killed_pids)
    print(
        f"\nchaos: {KILLS} kills survived, {ITEMS} items, 0 lost, 0 double-counted, "
        f"{len(duplicates)} duplicate executions, {elapsed:.1f}s"
    )
