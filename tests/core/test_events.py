"""Batch events (batchd.core.events): each transition appends one event to its tenant's
stream in the step that makes it, the record of an item that does not end the batch
none; a read resumes exactly after a cursor, and refuses one whose successors were
trimmed, or one the stream never had."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

import batchd.core
from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemCounts,
    ItemOutcome,
    ItemState,
    NewItem,
)
from batchd.core.errors import FailedPrecondition, InvalidRequest
from batchd.core.events import OLDEST, BatchEvent, BatchEventType, check_cursor
from batchd.core.keys import Keys
from batchd.core.store import BatchStore

LEASE = 60.0
NewBatch = Callable[..., Awaitable[BatchRecord]]
T = BatchEventType


def outcome(index: int, state: ItemState = ItemState.SUCCEEDED) -> ItemOutcome:
    return ItemOutcome(index, state, 1, 1.0, 2.0, b"{}" if state is ItemState.SUCCEEDED else None)


async def all_events(store: BatchStore, tenant: str = "default") -> list[BatchEvent]:
    page = await store.events.read(tenant, OLDEST, 1000)
    return list(page.events)


async def run_chunk(store: BatchStore, batch_id: str, chunk: int, indexes: range) -> None:
    claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=LEASE)
    assert claimed is not None
    await store.record_outcomes(
        batch_id, chunk, [outcome(i) for i in indexes], token=claimed.token, release=True
    )


def test_the_scripts_write_only_known_event_types() -> None:
    lua = Path(batchd.core.__file__).parent / "lua"
    written = {
        name
        for script in lua.glob("*.lua")
        for name in re.findall(r"batch_event\('([A-Z_]+)'\)", script.read_text())
    }
    assert written == {t.name for t in BatchEventType} - {"CREATED"}  # CREATED: the commit's


async def test_submit_start_and_finish_in_order_with_counts(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch(total=4, chunk_size=2)
    advance(1)
    await run_chunk(store, batch.batch_id, 0, range(2))
    advance(1)
    await run_chunk(store, batch.batch_id, 1, range(2, 4))
    events = await all_events(store)
    assert [(e.type, e.state) for e in events] == [
        (T.CREATED, BatchState.QUEUED),
        (T.STARTED, BatchState.RUNNING),
        (T.FINISHED, BatchState.COMPLETED),
    ]
    assert {e.batch_id for e in events} == {batch.batch_id}
    created, started, finished = events
    assert created.counts == ItemCounts(pending=4)
    assert created.total_items == 4
    assert created.time == batch.create_time
    assert started.counts == ItemCounts(pending=2, running=2)
    assert finished.counts == ItemCounts(succeeded=4)
    assert finished.time == created.time + 2
    assert finished.handler == "test.echo"
    cursors = [e.cursor for e in events]
    assert cursors == sorted(cursors, key=lambda c: tuple(int(p) for p in c.split("-")))


async def test_pause_resume_cancel_retry_and_delete(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch(total=2, chunk_size=2)
    bid = batch.batch_id
    await store.pause_batch(bid)
    await store.pause_batch(bid)  # idempotent: no second event
    await store.resume_batch(bid)
    await store.cancel_batch(bid)  # nothing ran: cancelled at once
    await store.cancel_batch(bid)
    assert [(e.type, e.state) for e in await all_events(store)] == [
        (T.CREATED, BatchState.QUEUED),
        (T.PAUSED, BatchState.PAUSED),
        (T.RESUMED, BatchState.QUEUED),
        (T.CANCEL_REQUESTED, BatchState.CANCELLING),
        (T.FINISHED, BatchState.CANCELLED),
    ]

    failing = await new_batch(total=1, chunk_size=1)
    claimed = await store.claim_chunk(failing.batch_id, 0, lease_ttl=LEASE)
    assert claimed is not None
    await store.record_outcomes(
        failing.batch_id, 0, [outcome(0, ItemState.FAILED)], token=claimed.token, release=True
    )
    await store.retry_items(failing.batch_id, [], "")
    await run_chunk(store, failing.batch_id, 0, range(1))
    await store.delete_batch(failing.batch_id)
    mine = [e for e in await all_events(store) if e.batch_id == failing.batch_id]
    assert [(e.type, e.state) for e in mine] == [
        (T.CREATED, BatchState.QUEUED),
        (T.STARTED, BatchState.RUNNING),
        (T.FINISHED, BatchState.COMPLETED),
        (T.RETRIED, BatchState.RUNNING),
        (T.FINISHED, BatchState.COMPLETED),
        (T.DELETED, BatchState.COMPLETED),
    ]
    assert mine[2].counts == ItemCounts(failed=1)
    assert mine[-1].counts == ItemCounts(succeeded=1)


async def test_item_records_that_do_not_end_the_batch_write_no_event(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch(total=6, chunk_size=3)
    claimed = await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE)
    assert claimed is not None
    before = len(await all_events(store))
    for index in range(3):
        await store.record_outcomes(
            batch.batch_id, 0, [outcome(index)], token=claimed.token, release=index == 2
        )
    assert len(await all_events(store)) == before


async def test_a_read_resumes_exactly_after_its_cursor(
    store: BatchStore, new_batch: NewBatch
) -> None:
    ids = [(await new_batch(total=1)).batch_id for _ in range(5)]
    first = await store.events.read("default", OLDEST, 2)
    assert [e.batch_id for e in first.events] == ids[:2]
    assert first.position == first.events[-1].cursor
    rest = await store.events.read("default", first.position, 100)
    assert [e.batch_id for e in rest.events] == ids[2:]
    assert (await store.events.read("default", rest.position, 100)).events == []
    now = await store.events.position_now("default")
    assert now == rest.position
    later = await new_batch(total=1)
    assert [e.batch_id for e in (await store.events.read("default", now, 10)).events] == [
        later.batch_id
    ]


async def test_a_tenant_reads_only_its_own_stream(store: BatchStore) -> None:
    async def submit(batch_id: str, tenant: str) -> None:
        options = BatchOptions(chunk_size=1)
        spec = BatchSpec(batch_id, "test.echo", options, {"team": "a"}, tenant=tenant)
        session = await store.begin_upload(spec)
        await session.add_items([NewItem("x", b"{}")])
        await session.commit()

    await submit("acme~one", "acme")
    await submit("other~two", "other")
    acme = await all_events(store, "acme")
    assert [(e.batch_id, e.metadata) for e in acme] == [("acme~one", {"team": "a"})]
    assert [e.batch_id for e in await all_events(store, "other")] == ["other~two"]
    assert await all_events(store) == []


async def test_a_cursor_whose_successors_were_trimmed_is_refused(
    redis: Redis, keys: Keys, new_batch: NewBatch, store: BatchStore
) -> None:
    await new_batch(total=1)
    cursor = (await all_events(store))[0].cursor
    stream = keys.events("default")
    for n in range(20):  # as XADD MAXLEN trims: the oldest go first
        filler = {"type": "CREATED", "batch": f"f{n}", "state": 1}
        await redis.xadd(stream, filler, maxlen=5, approximate=False)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match=r"was trimmed.*BATCHD_EVENTS_RETAIN"):
        await store.events.read("default", cursor, 10)
    # The oldest retained is where a fresh start goes.
    assert len((await store.events.read("default", OLDEST, 100)).events) == 5


async def test_a_cursor_past_the_stream_is_refused(store: BatchStore, new_batch: NewBatch) -> None:
    with pytest.raises(FailedPrecondition, match=r"past the last event"):
        await store.events.read("default", "99999999999999-0", 10)
    await new_batch(total=1)
    with pytest.raises(FailedPrecondition, match=r"past the last event"):
        await store.events.read("default", "99999999999999-0", 10)


def test_a_malformed_cursor_is_invalid() -> None:
    assert check_cursor("1733390000000-3") == "1733390000000-3"
    for bad in ("", "abc", "12", "1-2-3", "-1-0", "1-x"):
        with pytest.raises(InvalidRequest) as caught:
            check_cursor(bad)
        assert caught.value.violations[0].field == "cursor"


async def test_no_events_with_retain_zero(redis: Redis, keys: Keys) -> None:
    store = BatchStore(redis, keys, events_retain=0)
    spec = BatchSpec(f"b-{uuid.uuid4().hex[:8]}", "test.echo", BatchOptions(chunk_size=1), {})
    session = await store.begin_upload(spec)
    await session.add_items([NewItem("x", b"{}")])
    batch, _ = await session.commit()
    await store.cancel_batch(batch.batch_id)
    assert not await redis.exists(keys.events("default"))
