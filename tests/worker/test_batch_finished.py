"""`batch_finished` from workers: two in-process workers share a batch's chunks, and the
end of the batch is logged once, by whichever recorded its last item."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import structlog
from redis.asyncio import Redis

from batchd.core.config import Settings
from batchd.core.domain import BatchOptions, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler, ItemContext, handler

ITEMS = 40


def counting_handler(name: str, ran: Counter[str], both: asyncio.Event) -> Handler:
    """`test.share`, counting in `ran[name]` the items this worker's copy runs."""

    @handler("test.share", params_schema={"type": "object"})
    async def share(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        """Ends once both workers have run an item: the one that starts first holds
        its few chunks until the other, however late it starts polling, has taken
        some of the rest."""
        ran[name] += 1
        if len(ran) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 60)
        return {}

    return share


async def test_two_workers_log_the_end_of_their_batch_once(redis: Redis, redis_url: str) -> None:
    # Two chunks at a time per worker: the first to start cannot hold all twenty.
    settings = Settings(
        redis_url=redis_url, key_prefix=f"bf{uuid.uuid4().hex[:10]}:", worker_max_chunks=2
    )
    store = BatchStore(redis, Keys(settings.key_prefix))
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    spec = BatchSpec(
        batch_id=batch_id, handler="test.share", options=BatchOptions(chunk_size=2), metadata={}
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"i{n}", json.dumps({}).encode()) for n in range(ITEMS))
    await session.commit()

    ran: Counter[str] = Counter()
    both = asyncio.Event()
    workers = [
        build_worker(
            settings,
            burst=True,
            handlers={"test.share": counting_handler(name, ran, both)},
            poll_delay=0.01,
        )
        for name in ("a", "b")
    ]
    with structlog.testing.capture_logs() as logs:
        try:
            await asyncio.gather(*(worker.async_run() for worker in workers))
        finally:
            for worker in workers:
                await worker.close()

    assert (await store.get_batch(batch_id)).state is BatchState.COMPLETED
    assert set(ran) == {"a", "b"}
    assert sum(ran.values()) == ITEMS
    ends = [log for log in logs if log["event"] == "batch_finished"]
    assert len(ends) == 1
    assert (ends[0]["batch_id"], ends[0]["succeeded"], ends[0]["total"]) == (batch_id, ITEMS, ITEMS)
    # Chunk lifecycle at debug: every chunk claimed and done.
    claimed = [log for log in logs if log["event"] == "chunk_claimed"]
    done = [log for log in logs if log["event"] == "chunk_done"]
    assert {log["chunk"] for log in claimed} == {log["chunk"] for log in done} == set(range(20))
    assert {log["log_level"] for log in claimed + done} == {"debug"}
