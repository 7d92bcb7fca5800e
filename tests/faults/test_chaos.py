"""Nothing lost, nothing counted twice: 20,000 items with transient failures while
workers are SIGKILLed and restarted every second — uploaded first, or starting early
while the upload still brings items."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from support.faults import applied, rng, wait_for_handler
from support.polling import poll
from support.processes import ServiceProcess

from batchd.client import AsyncClient, BatchState, ItemState

# A deadline for a hang, not a speed target: two cores shared with other test runs
# take several times longer than an idle machine.
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

ITEMS = 20_000
KILLS = 10


RETRY = {"max_attempts": 20, "min_backoff": 0.05, "max_backoff": 0.5}


async def test_workers_killed_every_second(
    client: AsyncClient, workers: Callable[..., ServiceProcess], chaos_log: Path
) -> None:
    pool = [workers() for _ in range(3)]
    await wait_for_handler(client, "chaos.append")
    items = ((f"c{i}", {"ms": 15, "fail_rate": 0.1}) for i in range(ITEMS))
    submitted = await client.upload(
        "chaos.append", items, options={"chunk_size": 200, "retry_policy": RETRY}
    )
    batch_id = submitted.batch.batch_id
    killed_pids = await kill_while_running(client, batch_id, pool, workers)
    await all_applied_once(client, batch_id, chaos_log, killed_pids)


async def test_workers_killed_while_an_early_upload_runs(
    client: AsyncClient, workers: Callable[..., ServiceProcess], chaos_log: Path
) -> None:
    """The items come over several seconds and run as they come: the kills land on
    chunks appended while others are still on their way."""
    pool = [workers() for _ in range(3)]
    await wait_for_handler(client, "chaos.append")

    async def trickle() -> AsyncIterator[tuple[str, dict[str, object]]]:
        for i in range(ITEMS):
            if i and i % 2000 == 0:
                await asyncio.sleep(0.5)  # the pace of a slow producer
            yield f"c{i}", {"ms": 15, "fail_rate": 0.1}

    batch_id = f"early-chaos-{time.time_ns()}"
    upload = asyncio.create_task(
        client.upload(
            "chaos.append",
            trickle(),
            options={"chunk_size": 200, "retry_policy": RETRY},
            start_early=True,
            item_count=ITEMS,
            batch_id=batch_id,
        )
    )

    async def running() -> bool | None:
        return any([b async for b in client.list() if b.batch_id == batch_id]) or None

    await poll(running)
    assert (await client.get(batch_id)).uploading
    killed_pids = await kill_while_running(client, batch_id, pool, workers)
    assert (await upload).batch.total_items == ITEMS
    await all_applied_once(client, batch_id, chaos_log, killed_pids)


async def kill_while_running(
    client: AsyncClient,
    batch_id: str,
    pool: list[ServiceProcess],
    workers: Callable[..., ServiceProcess],
) -> set[int]:
    """Kills a worker of `pool` (and starts another) every second, KILLS times, while
    the batch runs; returns the killed pids."""
    killed_pids: set[int] = set()
    chooser = rng()
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
    return killed_pids


async def all_applied_once(
    client: AsyncClient, batch_id: str, chaos_log: Path, killed_pids: set[int]
) -> None:
    """The batch completes with every item SUCCEEDED, and each item's effect applied
    once but for items a killed worker had in hand."""
    after_kills = time.monotonic()
    last = None
    async for progress in client.watch(batch_id, min_interval=0.2):
        c = progress.counts
        assert c.pending + c.claimed + c.running + c.finished == ITEMS
        last = progress
    assert last is not None
    assert last.state == BatchState.COMPLETED
    elapsed = time.monotonic() - after_kills

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
        f"{len(duplicates)} duplicate executions, done {elapsed:.1f}s after the last kill"
    )
