"""The bytes uploads stage before they commit: what an item costs, and the cap per upload."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from batchd.core.domain import DEFAULT_TENANT, BatchOptions, BatchSpec, NewItem
from batchd.core.errors import Exhausted
from batchd.core.keys import Keys
from batchd.core.store import BatchStore, Limits, UploadSession
from batchd.core.upload import STAGED_ITEM_OVERHEAD, staged_bytes

PARAMS = b'{"s":"' + b"x" * 990 + b'"}'  # 1,000 bytes
ITEM = len(PARAMS) + 2 * len("i-0000") + STAGED_ITEM_OVERHEAD  # what each item costs


def item(n: int) -> NewItem:
    return NewItem(f"i-{n:04d}", PARAMS)


async def open_upload(
    store: BatchStore, count: int, *, tenant: str = DEFAULT_TENANT, chunk_size: int = 10
) -> UploadSession:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=chunk_size),
        metadata={},
        tenant=tenant,
    )
    session = await store.begin_upload(spec)
    await session.add_items(item(n) for n in range(count))
    return session


async def batch_keys(redis: Redis, keys: Keys, session: UploadSession) -> list[bytes]:
    pattern = f"{keys.prefix}b:{{{session.spec.batch_id}}}*"
    return [key async for key in redis.scan_iter(match=pattern, count=1000)]


def test_an_item_costs_its_params_twice_its_id_and_the_overhead() -> None:
    assert staged_bytes(NewItem("a" * 64, b"{}")) == 2 + 128 + STAGED_ITEM_OVERHEAD
    assert staged_bytes(NewItem("é", b"{}")) == 2 + 4 + STAGED_ITEM_OVERHEAD  # UTF-8 bytes


async def test_tiny_params_under_long_ids_reach_the_upload_byte_cap(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    # 1,000 items of `{}` are 2,000 bytes of params, but 180,000 bytes of Redis.
    store = BatchStore(redis, keys, clock=clock, limits=Limits(max_upload_bytes=100_000))
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=100),
        metadata={},
    )
    session = await store.begin_upload(spec)
    with pytest.raises(Exhausted) as caught:
        await session.add_items(NewItem(f"{n:064d}", b"{}") for n in range(1000))
    assert caught.value.quota_subject == "max_upload_bytes"
    assert session.item_count == 100_000 // 180 + 1  # refused at the first item past it
    assert await batch_keys(redis, keys, session) == []
