"""Listing items and batches: states, filters and page tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from batchd.core import codec
from batchd.core.domain import BatchRecord, BatchState, ItemOutcome, ItemState, ItemView
from batchd.core.errors import InvalidRequest
from batchd.core.store import BatchStore

# The conftest fixture: new_batch(total=7, chunk_size=3) -> the committed batch.
NewBatch = Callable[..., Awaitable[BatchRecord]]

OK, FAILED, CANCELLED = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED
PENDING, RUNNING = ItemState.PENDING, ItemState.RUNNING


def outcome(index: int, state: ItemState) -> ItemOutcome:
    return ItemOutcome(
        index=index,
        state=state,
        attempts=2,
        start_time=1_700_000_000.25,
        end_time=1_700_000_001.5,
        output_json=b'{"i":%d}' % index if state is OK else None,
        error_code=5 if state is FAILED else 0,
        error_message=f"no {index}" if state is FAILED else "",
    )


async def list_all(
    store: BatchStore, batch_id: str, page_size: int, states: list[ItemState] | None = None
) -> tuple[list[ItemView], int]:
    """Every item through the pages; also returns the number of pages."""
    found: list[ItemView] = []
    cursor, pages = "", 0
    while True:
        page, cursor = await store.list_items(batch_id, page_size, cursor, states or [])
        assert len(page) <= page_size
        found += page
        pages += 1
        if not cursor:
            return found, pages


async def test_items_read_as_their_outcome_or_their_chunk_says(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch(10, chunk_size=3)
    bid = batch.batch_id
    first = await store.claim_chunk(bid, 0, lease_ttl=60)
    assert first is not None
    await store.record_outcomes(
        bid, 0, [outcome(0, OK), outcome(1, FAILED)], token=first.token, release=False
    )
    await store.claim_chunk(bid, 2, lease_ttl=60)  # items 6-8 running; chunks 1 and 3 queued

    items, pages = await list_all(store, bid, page_size=4)
    assert pages == 3
    assert [i.custom_id for i in items] == [f"item-{n}" for n in range(10)]
    assert [i.index for i in items] == list(range(10))
    assert [i.state for i in items] == [
        OK,
        FAILED,
        RUNNING,
        *[PENDING] * 3,
        *[RUNNING] * 3,
        PENDING,
    ]
    assert items[0] == ItemView(
        custom_id="item-0",
        index=0,
        state=OK,
        attempts=2,
        start_time=1_700_000_000.25,
        end_time=1_700_000_001.5,
        output_json=b'{"i":0}',
    )
    assert (items[1].error_code, items[1].error_message, items[1].output_json) == (5, "no 1", None)
    assert items[3] == ItemView(custom_id="item-3", index=3, state=PENDING)

    await store.cancel_batch(bid)  # queued chunks 1 and 3 become cancelled
    items, _ = await list_all(store, bid, page_size=100)
    assert [i.state for i in items] == [
        OK, FAILED, RUNNING, *[CANCELLED] * 3, *[RUNNING] * 3, CANCELLED
    ]  # fmt: skip


async def test_a_state_filter_pages_through_matches_only(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch(12, chunk_size=4)
    bid = batch.batch_id
    for chunk in range(3):
        claimed = await store.claim_chunk(bid, chunk, lease_ttl=60)
        assert claimed is not None
        results = [outcome(i, FAILED if i % 3 == 0 else OK) for i, _, _ in claimed.items]
        await store.record_outcomes(bid, chunk, results, token=claimed.token, release=True)

    failed, pages = await list_all(store, bid, page_size=2, states=[FAILED])
    assert [i.index for i in failed] == [0, 3, 6, 9]
    assert pages == 2
    assert all(i.state is FAILED and i.error_message == f"no {i.index}" for i in failed)
    assert [i.custom_id for i in failed] == ["item-0", "item-3", "item-6", "item-9"]

    succeeded, _ = await list_all(store, bid, page_size=3, states=[OK])
    assert [i.index for i in succeeded] == [1, 2, 4, 5, 7, 8, 10, 11]
    both, _ = await list_all(store, bid, page_size=5, states=[OK, FAILED])
    assert [i.index for i in both] == list(range(12))
    assert await list_all(store, bid, page_size=5, states=[RUNNING]) == ([], 1)


async def test_a_sparse_filter_returns_short_pages_with_a_token(
    store: BatchStore, new_batch: NewBatch
) -> None:
    # 200 chunks of one item: more than a single call scans.
    batch = await new_batch(200, chunk_size=1)
    page, cursor = await store.list_items(batch.batch_id, 10, "", [RUNNING])
    assert page == []
    assert cursor  # not the end: come back for more
    items, pages = await list_all(store, batch.batch_id, page_size=10, states=[RUNNING])
    assert items == []
    assert pages > 1


async def test_a_foreign_page_token_is_invalid(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch(2)
    for token in ("!!", codec.encode_token("x"), codec.encode_token("-1")):
        with pytest.raises(InvalidRequest) as caught:
            await store.list_items(batch.batch_id, 10, token, [])
        assert [v.field for v in caught.value.violations] == ["page_token"]
    with pytest.raises(InvalidRequest):
        await store.list_batches(10, codec.encode_token("12"), [])


async def test_batches_list_newest_first_across_pages(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch, new_batch: NewBatch
) -> None:
    ids = []
    for n in range(7):
        # Batches 2-5 share one creation millisecond: ties must not be lost or repeated.
        ms = 1_700_000_000_000 + (2 if 2 <= n <= 5 else n)
        monkeypatch.setattr(store, "clock", lambda ms=ms: ms / 1000)
        batch = await new_batch(1)
        ids.append(batch.batch_id)
    monkeypatch.undo()

    listed, cursor = [], ""
    while True:
        page, cursor = await store.list_batches(2, cursor, [])
        assert len(page) <= 2
        listed += [b.batch_id for b in page]
        if not cursor:
            break
    expected = [ids[6], *sorted(ids[2:6], reverse=True), ids[1], ids[0]]
    assert listed == expected
    created = [(await store.get_batch(b)).create_time for b in listed]
    assert created == sorted(created, reverse=True)


async def test_batches_filter_by_state(store: BatchStore, new_batch: NewBatch) -> None:
    ids = []
    for _ in range(6):
        batch = await new_batch(2)
        ids.append(batch.batch_id)
    for batch_id in ids[1::2]:
        await store.cancel_batch(batch_id)

    cancelled, cursor = [], ""
    while True:
        page, cursor = await store.list_batches(2, cursor, [BatchState.CANCELLED])
        cancelled += page
        if not cursor:
            break
    assert {b.batch_id for b in cancelled} == set(ids[1::2])
    assert all(b.state is BatchState.CANCELLED for b in cancelled)
    queued, _ = await store.list_batches(10, "", [BatchState.QUEUED, BatchState.RUNNING])
    assert {b.batch_id for b in queued} == set(ids[0::2])
    assert await store.list_batches(10, "", [BatchState.COMPLETED]) == ([], "")
