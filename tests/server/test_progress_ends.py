"""A batch's end reaches its watchers without waiting for the progress feed's next poll:
the script that ends it publishes its id (`Keys.ended`) and the feed reads it at once.
The feed here polls every ten minutes, so only that wake-up can end the watch in time."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis
from support.polling import poll

from batchd.core.domain import BatchOptions, BatchSpec, BatchState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.server.progress import ProgressHub

POLL_INTERVAL = 600.0


async def test_the_terminal_snapshot_does_not_wait_for_the_next_poll(redis: Redis) -> None:
    keys = Keys(f"ends{uuid.uuid4().hex[:8]}:")
    store = BatchStore(redis, keys)
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    session = await store.begin_upload(BatchSpec(batch_id, "noop", BatchOptions(), {}))
    await session.add_items([NewItem("a", b"{}")])
    await session.commit()
    hub = ProgressHub(store, worker_ttl=5.0, poll_interval=POLL_INTERVAL, ended_channel=keys.ended)
    hub.start()
    try:

        async def subscribed() -> bool | None:
            counts = dict(await redis.pubsub_numsub(keys.ended))
            return counts.get(keys.ended.encode(), 0) == 1 or None

        await poll(subscribed)
        watch = hub.watch(batch_id, min_interval=0.0, heartbeat_interval=POLL_INTERVAL)
        first, _ = await anext(watch)
        assert first.batch.state == BatchState.QUEUED
        await store.cancel_batch(batch_id)  # nothing runs: it ends CANCELLED at once
        last, heartbeat = await anext(watch)  # pytest's timeout bounds it
        assert (last.batch.state, heartbeat) == (BatchState.CANCELLED, False)
        assert await anext(watch, None) is None  # the watch ends with it
    finally:
        await hub.close()
