"""A BatchStore per test over the session's private Redis (tests/conftest.py).

Every test gets its own key prefix, so the global keys (the batch index, the queue,
the handler catalog) start empty and nothing needs flushing. `new_batch` submits a
batch of `total` items `item-<i>` with params `{"n":<i>}`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore

# new_batch(total=7, chunk_size=3) -> the committed batch
NewBatch = Callable[..., Awaitable[BatchRecord]]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
def store(redis: Redis, keys: Keys) -> BatchStore:
    return BatchStore(redis, keys)


@pytest.fixture
def new_batch(store: BatchStore) -> NewBatch:
    async def submit(total: int = 7, chunk_size: int = 3) -> BatchRecord:
        spec = BatchSpec(
            batch_id=f"b-{uuid.uuid4().hex[:12]}",
            handler="test.echo",
            options=BatchOptions(chunk_size=chunk_size),
            metadata={},
        )
        session = await store.begin_upload(spec)
        await session.add_items(
            NewItem(custom_id=f"item-{i}", params_json=b'{"n":%d}' % i) for i in range(total)
        )
        batch, _ = await session.commit()
        return batch

    return submit
