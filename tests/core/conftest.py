"""A BatchStore per test over the session's private Redis (tests/conftest.py).

Every test gets its own key prefix, so the global keys (the batch index, the queue,
the handler catalog) start empty and nothing needs flushing. Shared helpers live in
`store_helpers` (this directory is put on sys.path, as tests/ is for `support`).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from batchd.core.keys import Keys
from batchd.core.store import BatchStore

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


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
