"""A BatchStore per test over the session's private Redis (tests/conftest.py).

Every test gets its own key prefix, so the global keys (the batch index, the queue,
the handler catalog, leases, deadlines) start empty and nothing needs flushing. The
store runs on a hand-driven clock (starting an hour ago, so that the ARQ jobs it
enqueues, even after an advance, are due for a real worker): tests move time with
`advance(seconds)` instead of sleeping, and read it with `store.clock()`. `new_batch`
submits a batch of `total` items `item-<i>` with params `{"n":<i>}`.
`consistent(batch_id)` checks that the counts agree with the items one by one, and
returns the counts.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, ItemCounts, ItemState, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore

# new_batch(total=7, chunk_size=3, completion_window=0.0) -> the committed batch
NewBatch = Callable[..., Awaitable[BatchRecord]]
# consistent(batch_id) -> its counts, once checked against its items
Consistent = Callable[[str], Awaitable[ItemCounts]]


class Clock:
    """Unix seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = float(int(time.time()) - 3600)  # whole seconds: exact in ms and back

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def advance(clock: Clock) -> Callable[[float], float]:
    """advance(seconds) -> the new time."""
    return clock.advance


@pytest.fixture
def store(redis: Redis, keys: Keys, clock: Clock) -> BatchStore:
    return BatchStore(redis, keys, clock=clock)


@pytest.fixture
def new_batch(store: BatchStore) -> NewBatch:
    async def submit(
        total: int = 7,
        chunk_size: int = 3,
        completion_window: float = 0.0,
        callback_url: str = "",
    ) -> BatchRecord:
        options = BatchOptions(
            chunk_size=chunk_size, completion_window=completion_window, callback_url=callback_url
        )
        spec = BatchSpec(
            batch_id=f"b-{uuid.uuid4().hex[:12]}",
            handler="test.echo",
            options=options,
            metadata={},
        )
        session = await store.begin_upload(spec)
        await session.add_items(
            NewItem(custom_id=f"item-{i}", params_json=b'{"n":%d}' % i) for i in range(total)
        )
        batch, _ = await session.commit()
        return batch

    return submit


_COUNTED = {
    ItemState.PENDING: "pending",
    ItemState.RUNNING: "running",
    ItemState.SUCCEEDED: "succeeded",
    ItemState.FAILED: "failed",
    ItemState.CANCELLED: "cancelled",
    ItemState.EXPIRED: "expired",
}


@pytest.fixture
def consistent(store: BatchStore, redis: Redis) -> Consistent:
    async def check(batch_id: str) -> ItemCounts:
        batch = await store.get_batch(batch_id)
        items, cursor = await store.list_items(batch_id, batch.total_items, "", [])
        assert cursor == ""
        assert [item.index for item in items] == list(range(batch.total_items))
        tally = Counter(_COUNTED[item.state] for item in items)
        # Every item is in exactly one state, and the counters say the same. An item of a
        # claimed chunk is RUNNING to ListBatchItems, whether its holder has started it
        # (counts.running) or not yet (counts.claimed): compared here as one.
        counts = replace(
            batch.counts, running=batch.counts.running + batch.counts.claimed, claimed=0
        )
        assert counts == ItemCounts(**tally), (batch.counts, tally)
        running = await redis.hvals(store.keys.running(batch_id))  # type: ignore[misc]
        assert sum(int(n) for n in running) == counts.running
        assert all(int(n) > 0 for n in running)
        if batch.state.is_terminal:
            assert batch.counts.finished == batch.total_items
            assert batch.end_time is not None
            assert not await redis.exists(store.keys.started(batch_id))
        return counts

    return check
