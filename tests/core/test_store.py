"""Writing batches: upload sessions, commit, abort, request_id replays."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from batchd.core import jobs
from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, BatchState, ItemCounts, NewItem
from batchd.core.errors import AlreadyExists, FieldViolation, InvalidRequest
from batchd.core.keys import Keys
from batchd.core.store import BatchStore


def new_id(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_spec(
    batch_id: str | None = None,
    *,
    chunk_size: int = 3,
    request_id: str = "",
    handler: str = "test.echo",
    metadata: dict[str, str] | None = None,
) -> BatchSpec:
    return BatchSpec(
        batch_id=batch_id or new_id(),
        handler=handler,
        options=BatchOptions(chunk_size=chunk_size),
        metadata=metadata if metadata is not None else {"team": "core"},
        request_id=request_id,
    )


def make_items(count: int, start: int = 0) -> list[NewItem]:
    return [NewItem(f"item-{i}", b'{"n":%d}' % i) for i in range(start, start + count)]


async def submit(
    store: BatchStore, spec: BatchSpec, items: Iterable[NewItem]
) -> tuple[BatchRecord, bool]:
    session = await store.begin_upload(spec)
    await session.add_items(items)
    return await session.commit()


async def keys_of(redis: Redis, batch_id: str) -> list[bytes]:
    """Every key that mentions the batch: its own keys and its ARQ jobs."""
    return sorted([key async for key in redis.scan_iter(match=f"*{batch_id}*", count=1000)])


async def test_commit_makes_the_batch_visible_and_runnable(
    store: BatchStore, redis: Redis, keys: Keys
) -> None:
    spec = make_spec(chunk_size=3, metadata={"team": "core", "run": "7"})
    batch, replayed = await submit(store, spec, make_items(7))

    assert not replayed
    assert (batch.batch_id, batch.handler, batch.state) == (
        spec.batch_id,
        "test.echo",
        BatchState.QUEUED,
    )
    assert (batch.total_items, batch.chunk_count) == (7, 3)
    assert batch.counts == ItemCounts(pending=7)
    assert batch.options.chunk_size == 3
    assert batch.metadata == {"team": "core", "run": "7"}
    assert batch.start_time is None
    assert batch.end_time is None
    assert await store.get_batch(spec.batch_id) == batch
    listed, _ = await store.list_batches(10, "", [])
    assert [b.batch_id for b in listed] == [spec.batch_id]

    # One ARQ job per chunk (the dispatch window is larger), due now at the batch's
    # priority, carrying only (batch_id, chunk).
    queued = await redis.zrange(keys.queue("test.echo"), 0, -1, withscores=True)
    job_ids = sorted(member.decode() for member, _ in queued)
    assert job_ids == [f"{spec.batch_id}:{n}" for n in range(3)]
    created_ms = round(batch.create_time * 1000)
    # Successive milliseconds of the tenant's dispatch clock, from its creation.
    scores = {int(score) for _, score in queued}
    assert scores == {jobs.dispatch_score(created_ms + 1 + n, 0) for n in range(3)}
    for n in range(3):
        raw = await redis.get(f"arq:job:{spec.batch_id}:{n}")
        assert raw is not None
        job = jobs.deserialize(raw)
        assert (job["f"], job["a"], job["k"]) == ("run_chunk", [spec.batch_id, n], {})


async def test_the_staged_keys_persist_at_commit(store: BatchStore, redis: Redis) -> None:
    spec = make_spec(chunk_size=2)
    session = await store.begin_upload(spec)
    await session.add_items(make_items(3))
    assert session.item_count == 3
    assert await redis.ttl(store.keys.chunk(spec.batch_id, 0)) > 0  # staged: expiring
    await session.commit()
    for key in await keys_of(redis, spec.batch_id):
        if not key.startswith(b"arq:job:"):
            assert await redis.ttl(key) == -1, key  # committed: kept
    assert not await redis.exists(store.keys.upload_lock(spec.batch_id))


async def test_default_chunk_size_applies_when_options_leave_it_zero(redis: Redis) -> None:
    store = BatchStore(redis, Keys(prefix=f"{new_id('t')}:"), default_chunk_size=4)
    batch, _ = await submit(store, make_spec(chunk_size=0), make_items(9))
    assert (batch.chunk_count, batch.options.chunk_size) == (3, 4)


async def test_abort_leaves_no_key_behind(store: BatchStore, redis: Redis) -> None:
    spec = make_spec(chunk_size=3)
    session = await store.begin_upload(spec)
    await session.add_items(make_items(7))  # two chunks staged, one item buffered
    assert await keys_of(redis, spec.batch_id)
    await session.abort()
    await session.abort()  # idempotent
    assert await keys_of(redis, spec.batch_id) == []
    # The batch id is free again.
    batch, _ = await submit(store, spec, make_items(2))
    assert batch.total_items == 2


async def test_a_cancelled_upload_leaves_no_key_behind(store: BatchStore, redis: Redis) -> None:
    spec = make_spec(chunk_size=10)
    session = await store.begin_upload(spec)
    staging = asyncio.Event()

    async def feed() -> None:
        for n in range(10_000):
            await session.add_items(make_items(10, start=10 * n))
            staging.set()

    task = asyncio.create_task(feed())
    await staging.wait()
    task.cancel()  # wherever it lands, mid-script or between chunks
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.abort()
    assert await keys_of(redis, spec.batch_id) == []


async def test_redis_errors_reach_the_caller_unwrapped(free_port: int) -> None:
    down = Redis(port=free_port, socket_connect_timeout=1)
    store = BatchStore(down)
    with pytest.raises(RedisConnectionError):
        await store.get_batch("any")
    with pytest.raises(RedisConnectionError):
        await store.begin_upload(make_spec())
    await down.aclose()


async def test_an_empty_batch_is_invalid(store: BatchStore, redis: Redis) -> None:
    spec = make_spec()
    session = await store.begin_upload(spec)
    with pytest.raises(InvalidRequest) as caught:
        await session.commit()
    assert [v.field for v in caught.value.violations] == ["items"]
    assert await keys_of(redis, spec.batch_id) == []


async def test_a_duplicate_custom_id_across_chunks_names_both_items(
    store: BatchStore, redis: Redis
) -> None:
    spec = make_spec(chunk_size=3)
    session = await store.begin_upload(spec)
    await session.add_items(make_items(5))
    with pytest.raises(InvalidRequest) as caught:
        await session.add_items([NewItem("item-1", b"{}"), *make_items(3, start=10)])
    assert caught.value.violations == [
        FieldViolation("items[5].custom_id", "custom_id 'item-1' is already used by items[1]")
    ]
    assert await keys_of(redis, spec.batch_id) == []  # the session aborted itself


async def test_a_duplicate_custom_id_inside_the_last_chunk(store: BatchStore, redis: Redis) -> None:
    spec = make_spec(chunk_size=10)
    session = await store.begin_upload(spec)
    await session.add_items([*make_items(4), NewItem("item-2", b"{}")])
    with pytest.raises(InvalidRequest) as caught:
        await session.commit()  # the duplicate is found when the last chunk is staged
    assert [v.field for v in caught.value.violations] == ["items[4].custom_id"]
    assert "items[2]" in caught.value.violations[0].description
    assert await keys_of(redis, spec.batch_id) == []


async def test_a_taken_batch_id_already_exists(store: BatchStore) -> None:
    spec = make_spec()
    await submit(store, spec, make_items(2))
    with pytest.raises(AlreadyExists, match=spec.batch_id):
        await store.begin_upload(make_spec(spec.batch_id))


async def test_a_batch_id_being_uploaded_already_exists(store: BatchStore, redis: Redis) -> None:
    spec = make_spec()
    first = await store.begin_upload(spec)
    await first.add_items(make_items(4))
    with pytest.raises(AlreadyExists, match="being uploaded"):
        await store.begin_upload(make_spec(spec.batch_id))
    batch, _ = await first.commit()  # the rival's failure did not disturb the upload
    assert batch.total_items == 4


async def test_a_request_id_replay_returns_the_original(store: BatchStore) -> None:
    request_id = new_id("req")
    original, _ = await submit(store, make_spec(request_id=request_id), make_items(5))

    # A retry whose batch id the server chose anew, or the caller's own id again.
    for batch_id in (new_id(), original.batch_id):
        again, replayed = await submit(
            store, make_spec(batch_id, request_id=request_id), make_items(5)
        )
        assert (again, replayed) == (original, True)
    listed, _ = await store.list_batches(10, "", [])
    assert [b.batch_id for b in listed] == [original.batch_id]


async def test_a_request_id_reused_with_another_body_is_invalid(store: BatchStore) -> None:
    request_id = new_id("req")
    await submit(store, make_spec(request_id=request_id), make_items(5))
    changes = [
        (make_spec(request_id=request_id), make_items(4)),
        (make_spec(request_id=request_id), [*make_items(4), NewItem("item-4", b'{"n":5}')]),
        (make_spec(request_id=request_id, handler="other"), make_items(5)),
        (make_spec(request_id=request_id, metadata={}), make_items(5)),
    ]
    for spec, items in changes:
        with pytest.raises(InvalidRequest) as caught:
            await submit(store, spec, items)
        assert [v.field for v in caught.value.violations] == ["request_id"]


async def test_a_request_id_committed_meanwhile_wins(store: BatchStore, redis: Redis) -> None:
    """Two uploads race with one request_id: the loser's staged keys are dropped."""
    request_id = new_id("req")
    first = await store.begin_upload(make_spec(request_id=request_id))
    loser_spec = make_spec(request_id=request_id)
    loser = await store.begin_upload(loser_spec)
    await first.add_items(make_items(6))
    await loser.add_items(make_items(6))
    original, _ = await first.commit()

    assert await loser.commit() == (original, True)
    assert await keys_of(redis, loser_spec.batch_id) == []

    other_spec = make_spec(request_id=new_id("req"))
    rival = await store.begin_upload(other_spec)
    different_spec = make_spec(request_id=other_spec.request_id)
    different = await store.begin_upload(different_spec)
    await rival.add_items(make_items(2))
    await different.add_items(make_items(3))
    await rival.commit()
    with pytest.raises(InvalidRequest):
        await different.commit()
    assert await keys_of(redis, different_spec.batch_id) == []
    assert await find_batch_ids(store) == sorted([original.batch_id, other_spec.batch_id])


async def find_batch_ids(store: BatchStore) -> list[str]:
    listed, _ = await store.list_batches(100, "", [])
    return sorted(b.batch_id for b in listed)
