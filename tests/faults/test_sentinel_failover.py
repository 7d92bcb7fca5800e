"""Redis high availability: a server and workers on a redis+sentinel:// URL carry a
batch through the loss of the primary. SIGKILL takes the primary mid-batch, the
Sentinels promote the replica, and the batch completes with every item counted exactly
once. With the replica held behind for a moment first, the failover loses the writes of
that moment: the items whose outcomes it took run again (at-least-once), and the counts
still add up."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from support.faults import applied, wait_for_handler
from support.net import find_free_port
from support.processes import WorkerPool, server
from support.sentinel import sentinel_group

from batchd.client import AsyncClient, BatchState, ItemState

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ITEMS = 3000
RETRY = {"max_attempts": 5, "min_backoff": 0.05, "max_backoff": 0.5}


# Seconds the primary goes on taking writes that never reach the replica.
BEHIND = 0.5


@pytest.mark.parametrize("replica", ["in_sync", "behind"])
async def test_a_batch_survives_the_primary_killed_mid_batch(tmp_path: Path, replica: str) -> None:
    chaos_log = tmp_path / "applied.log"
    with sentinel_group(tmp_path / "redis") as group:
        port = find_free_port()
        process = server(
            {
                "BATCHD_REDIS_URL": group.url,
                "BATCHD_PORT": str(port),
                # Submits answer once the replica holds the batch: the kill cannot lose it.
                "BATCHD_REDIS_MIN_REPLICAS_ACK": "1",
                "BATCHD_REDIS_REPLICA_ACK_TIMEOUT": "5",
                "BATCHD_LEASE_TTL": "2",
                "BATCHD_MAINTENANCE_INTERVAL": "0.5",
            },
            tmp_path / "server.log",
        ).start()
        pool = WorkerPool(
            group.url,
            tmp_path,
            {
                "BATCHD_HANDLERS": "chaos_handlers:handlers",
                "BATCHD_CHAOS_LOG": str(chaos_log),
                "BATCHD_LEASE_TTL": "2",
                "BATCHD_MAINTENANCE_INTERVAL": "0.5",
            },
            concurrency=20,
        )
        try:
            pool.start()
            pool.start()
            async with AsyncClient(f"127.0.0.1:{port}") as client:
                await wait_for_handler(client, "chaos.append")
                items = ((f"f{i}", {"ms": 40}) for i in range(ITEMS))
                submitted = await client.upload(
                    "chaos.append",
                    items,
                    options={"chunk_size": 100, "retry_policy": RETRY},
                    request_id=uuid.uuid4().hex,
                )
                batch_id = submitted.batch.batch_id
                old_primary = group.primary.port
                killed_at: float | None = None  # Unix time of the kill
                # Items finished in the first snapshot read after the kill (from the new
                # primary), and seconds from the kill to the first one that shows more.
                first_after: int | None = None
                resumed_after: float | None = None
                final = None
                async for progress in client.watch(batch_id, min_interval=0.05):
                    counts = progress.counts
                    assert counts.pending + counts.claimed + counts.running + counts.finished == (
                        progress.total_items
                    )
                    read_at = progress.observe_time.timestamp() if progress.observe_time else 0
                    if killed_at is None and counts.finished >= ITEMS // 4:
                        if replica == "behind":
                            group.cut_replication()
                            await asyncio.sleep(BEHIND)  # workers record outcomes meanwhile
                        group.primary.kill()  # SIGKILL, no persistence: its data is gone
                        killed_at = time.time()
                    elif killed_at is not None and read_at > killed_at:
                        if first_after is None:
                            first_after = counts.finished
                        elif resumed_after is None and counts.finished > first_after:
                            resumed_after = read_at - killed_at
                    final = progress
                assert killed_at is not None and resumed_after is not None
                assert group.primary_port() != old_primary  # the replica was promoted

                assert final is not None and final.state == BatchState.COMPLETED
                assert final.counts.succeeded == ITEMS
                rows = [item async for item in client.items(batch_id, page_size=1000)]
                assert len(rows) == ITEMS
                assert len({row.custom_id for row in rows}) == ITEMS  # no duplicate row
                assert Counter(row.state for row in rows) == {ItemState.SUCCEEDED: ITEMS}
            runs = Counter(key for key, _ in applied(chaos_log))
            assert len(runs) == ITEMS  # every item ran
            rerun = sum(runs.values()) - ITEMS
            print(
                f"\nsentinel failover, replica {replica}: progress resumed {resumed_after:.2f} s after the kill; "
                f"{rerun} items ran more than once ({sum(n > 1 for n in runs.values())} keys)"
            )
        finally:
            pool.stop()
            process.stop()
