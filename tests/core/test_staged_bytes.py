"""The bytes uploads stage before they commit: what an item costs, the cap per upload, and
the caps across uploads (service-wide and per tenant), released however an upload ends."""

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


def new_spec(*, tenant: str = DEFAULT_TENANT, chunk_size: int = 10) -> BatchSpec:
    return BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=chunk_size),
        metadata={},
        tenant=tenant,
    )


async def open_upload(
    store: BatchStore, count: int, *, tenant: str = DEFAULT_TENANT, chunk_size: int = 10
) -> UploadSession:
    session = await store.begin_upload(new_spec(tenant=tenant, chunk_size=chunk_size))
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
    session = await store.begin_upload(new_spec(chunk_size=100))
    with pytest.raises(Exhausted) as caught:
        await session.add_items(NewItem(f"{n:064d}", b"{}") for n in range(1000))
    assert caught.value.quota_subject == "max_upload_bytes"
    assert session.item_count == 100_000 // 180 + 1  # refused at the first item past it
    assert await batch_keys(redis, keys, session) == []


async def test_an_upload_stages_at_most_max_upload_bytes(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    store = BatchStore(redis, keys, clock=clock, limits=Limits(max_upload_bytes=1000))
    session = await store.begin_upload(new_spec())
    with pytest.raises(Exhausted) as caught:
        await session.add_items(NewItem(f"i{n}", b'{"s":"' + b"x" * 90 + b'"}') for n in range(20))
    assert caught.value.quota_subject == "max_upload_bytes"
    assert await batch_keys(redis, keys, session) == []


async def test_uploads_together_stage_at_most_max_staged_bytes(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    store = BatchStore(redis, keys, clock=clock, limits=Limits(max_staged_bytes=50 * ITEM))
    first = await open_upload(store, 30)
    with pytest.raises(Exhausted) as caught:
        await open_upload(store, 30)  # two chunks fit (30 + 20), the third not (60)
    refusal = caught.value
    assert refusal.quota_subject == "max_staged_bytes"
    assert refusal.retry_after > 0
    assert f"have staged {30 * ITEM} bytes" in refusal.message
    staged = await redis.hgetall(keys.staging_bytes)  # type: ignore[misc]
    assert staged == {f"{DEFAULT_TENANT} {first.spec.batch_id}".encode(): b"%d" % (30 * ITEM)}

    await first.abort()  # an abort frees its bytes at once
    second = await open_upload(store, 50)
    with pytest.raises(Exhausted):
        await open_upload(store, 10)
    await second.commit()  # and so does a commit
    assert await redis.hlen(keys.staging_bytes) == 0  # type: ignore[misc]
    third = await open_upload(store, 50)
    await third.commit()


async def test_a_refused_upload_leaves_nothing_staged(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    store = BatchStore(redis, keys, clock=clock, limits=Limits(max_staged_bytes=50 * ITEM))
    await open_upload(store, 30)
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=10),
        metadata={},
    )
    refused = await store.begin_upload(spec)
    with pytest.raises(Exhausted):
        await refused.add_items(item(n) for n in range(30))
    assert await batch_keys(redis, keys, refused) == []
    member = f"{DEFAULT_TENANT} {spec.batch_id}"
    assert await redis.zscore(keys.staging, member) is None
    assert await redis.hget(keys.staging_items, member) is None  # type: ignore[misc]
    assert await redis.hget(keys.staging_bytes, member) is None  # type: ignore[misc]


async def test_a_tenant_stages_at_most_its_share(
    redis: Redis, keys: Keys, clock: Callable[[], float]
) -> None:
    limits = Limits(max_staged_bytes=100 * ITEM, tenant_max_staged_bytes=40 * ITEM)
    store = BatchStore(redis, keys, clock=clock, limits=limits)
    await open_upload(store, 30, tenant="acme")
    with pytest.raises(Exhausted) as caught:
        await open_upload(store, 20, tenant="acme")
    assert caught.value.quota_subject == "tenant:acme:max_staged_bytes"
    await open_upload(store, 40, tenant="other")  # another tenant's share is its own
    with pytest.raises(Exhausted) as overall:
        await open_upload(store, 40, tenant="third")  # 70 staged: 110 > 100
    assert overall.value.quota_subject == "max_staged_bytes"


async def test_an_upload_past_its_staging_ttl_stops_counting(
    redis: Redis, keys: Keys, clock: Callable[[], float], advance: Callable[[float], float]
) -> None:
    # Its server died mid-stream: nothing aborts it, its staged keys expire, and so does
    # its share of the limit.
    store = BatchStore(
        redis, keys, clock=clock, staging_ttl=60, limits=Limits(max_staged_bytes=50 * ITEM)
    )
    gone = await open_upload(store, 40)
    with pytest.raises(Exhausted):
        await open_upload(store, 20)
    advance(61)
    alive = await open_upload(store, 40)
    member = f"{DEFAULT_TENANT} {gone.spec.batch_id}".encode()
    assert member not in await redis.hgetall(keys.staging_bytes)  # type: ignore[misc]
    await alive.commit()
