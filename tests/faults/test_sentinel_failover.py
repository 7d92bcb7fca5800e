"""Redis high availability: a server and workers on a redis+sentinel:// URL carry a
batch through the loss of the primary. SIGKILL takes the primary mid-batch, the
Sentinels promote the replica, and the batch completes with every item counted exactly
once. With the replica cut off for a moment first, the failover loses the writes of
that moment: the items whose outcomes it took run again (at-least-once), and the counts
still add up."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.faults import applied, wait_for_handler
from support.net import find_free_port
from support.processes import WorkerPool, server
from support.sentinel import SentinelGroup, sentinel_group

from batchd.client import AsyncClient, BatchProgress, BatchState, ItemState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ITEMS = 3000
RETRY = {"max_attempts": 5, "min_backoff": 0.05, "max_backoff": 0.5}
# Short leases and sweeps: a chunk whose holder lost its claim in the failover is taken
# over within seconds.
FAST_RECOVERY = {"BATCHD_LEASE_TTL": "2", "BATCHD_MAINTENANCE_INTERVAL": "0.5"}
# Seconds the primary goes on taking writes that never reach the replica.
BEHIND = 0.5


@contextmanager
def service(group: SentinelGroup, directory: Path, chaos_log: Path) -> Iterator[int]:
    """A server subprocess and two worker subprocesses on the Sentinels' URL; yields
    the server's port, kills them all at the end."""
    port = find_free_port()
    env = {
        "BATCHD_REDIS_URL": group.url,
        "BATCHD_PORT": str(port),
        # Submits answer once the replica holds the batch: the kill cannot lose it.
        "BATCHD_REDIS_MIN_REPLICAS_ACK": "1",
        "BATCHD_REDIS_REPLICA_ACK_TIMEOUT": "5",
        **FAST_RECOVERY,
    }
    process = server(env, directory / "server.log").start()
    pool = WorkerPool(
        group.url,
        directory,
        {"BATCHD_HANDLERS": "chaos_handlers:handlers", "BATCHD_CHAOS_LOG": str(chaos_log)}
        | FAST_RECOVERY,
        concurrency=20,
    )
    try:
        pool.start()
        pool.start()
        yield port
    finally:
        pool.stop()
        process.stop()


@dataclass
class Failover:
    final: BatchProgress
    # Seconds from the kill to the first snapshot read from the new primary that shows
    # more items finished than an earlier one (or the batch over).
    resumed_after: float


async def kill_primary_midway(
    client: AsyncClient, batch_id: str, group: SentinelGroup, *, behind: bool
) -> Failover:
    """Watches the batch to its end, killing the primary a quarter of the way."""
    killed_at: float | None = None  # Unix time
    # Items finished in the first snapshot read after the kill (from the new primary).
    first_after: int | None = None
    resumed_after: float | None = None
    final = None
    async for progress in client.watch(batch_id, min_interval=0.05):
        counts = progress.counts
        assert counts.pending + counts.claimed + counts.running + counts.finished == (
            progress.total_items
        )
        read_at = progress.observe_time.timestamp() if progress.observe_time else 0.0
        if killed_at is None and counts.finished >= ITEMS // 4:
            if behind:
                group.cut_replication()
                await asyncio.sleep(BEHIND)  # workers record outcomes meanwhile
            group.primary.kill()  # SIGKILL, no persistence: its data is gone
            killed_at = time.time()
        elif killed_at is not None and read_at > killed_at and resumed_after is None:
            if first_after is None:
                first_after = counts.finished
            if counts.finished > first_after or progress.state.is_terminal:
                resumed_after = read_at - killed_at
        final = progress
    assert final is not None
    assert resumed_after is not None, "no progress after the kill"
    return Failover(final, resumed_after)


@pytest.mark.parametrize("replica", ["in_sync", "behind"])
async def test_a_batch_survives_the_primary_killed_mid_batch(tmp_path: Path, replica: str) -> None:
    chaos_log = tmp_path / "applied.log"
    with (
        sentinel_group(tmp_path / "redis") as group,
        service(group, tmp_path, chaos_log) as port,
    ):
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            await wait_for_handler(client, "chaos.append")
            submitted = await client.upload(
                "chaos.append",
                ((f"f{i}", {"ms": 40}) for i in range(ITEMS)),
                options={"chunk_size": 100, "retry_policy": RETRY},
                request_id=uuid.uuid4().hex,
            )
            batch_id = submitted.batch.batch_id
            old_primary = group.primary.port
            failover = await kill_primary_midway(
                client, batch_id, group, behind=replica == "behind"
            )
            assert group.primary_port() != old_primary  # the replica was promoted
            assert failover.final.state == BatchState.COMPLETED
            assert failover.final.counts.succeeded == ITEMS
            rows = [item async for item in client.items(batch_id, page_size=1000)]
            assert len(rows) == ITEMS
            assert len({row.custom_id for row in rows}) == ITEMS  # no duplicate row
            assert Counter(row.state for row in rows) == {ItemState.SUCCEEDED: ITEMS}
    runs = Counter(key for key, _ in applied(chaos_log))
    assert len(runs) == ITEMS  # every item ran
    print(
        f"\nsentinel failover, replica {replica}: progress resumed "
        f"{failover.resumed_after:.2f} s after the kill; "
        f"{sum(n > 1 for n in runs.values())} items ran more than once"
    )
