"""Running batches: claims, outcome records, completion and cancellation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ResponseError

from batchd.core.domain import (
    BatchRecord,
    BatchState,
    ItemCounts,
    ItemOutcome,
    ItemState,
)
from batchd.core.errors import NotFound
from batchd.core.store import BatchStore

# The conftest fixture: new_batch(total=7, chunk_size=3) -> the committed batch.
NewBatch = Callable[..., Awaitable[BatchRecord]]

OK, FAILED, CANCELLED = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED


def outcome(index: int, state: ItemState = OK) -> ItemOutcome:
    return ItemOutcome(
        index=index,
        state=state,
        attempts=1,
        start_time=1_700_000_000.0,
        end_time=1_700_000_001.5,
        output_json=b'{"i":%d}' % index if state is OK else None,
        error_code=13 if state is FAILED else 0,
        error_message="boom" if state is FAILED else "",
    )


async def counts(store: BatchStore, batch_id: str) -> ItemCounts:
    batch = await store.get_batch(batch_id)
    assert batch.counts.total == batch.total_items  # they always add up
    return batch.counts


async def test_claim_hands_out_the_chunk_and_starts_the_batch(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()  # chunks of 3, 3 and 1
    claimed = await store.claim_chunk(batch.batch_id, 1)

    assert claimed is not None
    assert (claimed.batch_id, claimed.chunk, claimed.first_index) == (batch.batch_id, 1, 3)
    assert claimed.handler == "test.echo"
    assert claimed.options == batch.options
    assert claimed.items == [(i, f"item-{i}", b'{"n":%d}' % i) for i in (3, 4, 5)]
    running = await store.get_batch(batch.batch_id)
    assert running.state is BatchState.RUNNING
    assert running.start_time is not None
    assert running.counts == ItemCounts(pending=4, running=3)

    last = await store.claim_chunk(batch.batch_id, 2)
    assert last is not None
    assert last.items == [(6, "item-6", b'{"n":6}')]
    assert await counts(store, batch.batch_id) == ItemCounts(pending=3, running=4)


async def test_records_move_the_counts(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    await store.claim_chunk(batch.batch_id, 0)
    state = await store.record_outcomes(
        batch.batch_id, 0, [outcome(0), outcome(1, FAILED)], release=False
    )
    assert state is BatchState.RUNNING
    assert await counts(store, batch.batch_id) == ItemCounts(
        pending=4, running=1, succeeded=1, failed=1
    )


async def test_a_duplicate_record_counts_nothing_twice(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    await store.claim_chunk(batch.batch_id, 0)
    await store.record_outcomes(batch.batch_id, 0, [outcome(0), outcome(1)], release=False)
    before = await counts(store, batch.batch_id)

    # A flush repeated after a crash, even with another verdict: the first one stands.
    await store.record_outcomes(batch.batch_id, 0, [outcome(1, FAILED)], release=False)
    assert await counts(store, batch.batch_id) == before
    items, _ = await store.list_items(batch.batch_id, 2, "", [])
    assert [i.state for i in items] == [OK, OK]

    # The retried job claims the chunk again: only the unrecorded item, no new count.
    again = await store.claim_chunk(batch.batch_id, 0)
    assert again is not None
    assert [index for index, _, _ in again.items] == [2]
    assert await counts(store, batch.batch_id) == before


async def test_the_batch_completes_when_every_item_is_terminal(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    states = []
    for chunk in range(3):
        claimed = await store.claim_chunk(batch.batch_id, chunk)
        assert claimed is not None
        results = [outcome(index, FAILED if index == 4 else OK) for index, _, _ in claimed.items]
        states.append(await store.record_outcomes(batch.batch_id, chunk, results, release=True))

    assert states == [BatchState.RUNNING, BatchState.RUNNING, BatchState.COMPLETED]
    done = await store.get_batch(batch.batch_id)
    assert done.state is BatchState.COMPLETED
    assert done.counts == ItemCounts(succeeded=6, failed=1)
    assert done.end_time is not None
    assert done.start_time is not None
    assert done.end_time >= done.start_time
    assert await store.claim_chunk(batch.batch_id, 0) is None  # a late retry: nothing to do


async def test_an_unclaimed_chunk_takes_no_outcomes(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    await store.record_outcomes(batch.batch_id, 1, [outcome(3)], release=True)
    assert await counts(store, batch.batch_id) == ItemCounts(pending=7)


async def test_an_outcome_outside_its_chunk_is_refused(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    await store.claim_chunk(batch.batch_id, 0)
    with pytest.raises(ResponseError, match="not in chunk"):
        await store.record_outcomes(batch.batch_id, 0, [outcome(0), outcome(3)], release=False)
    assert await counts(store, batch.batch_id) == ItemCounts(pending=4, running=3)


async def test_only_terminal_outcomes_are_recorded(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    with pytest.raises(ValueError, match="not terminal"):
        await store.record_outcomes(
            batch.batch_id, 0, [outcome(0, ItemState.RUNNING)], release=False
        )


async def test_cancel_waits_for_the_claimed_chunk(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    await store.claim_chunk(batch.batch_id, 0)
    await store.record_outcomes(batch.batch_id, 0, [outcome(0)], release=False)

    cancelling = await store.cancel_batch(batch.batch_id)
    assert cancelling.state is BatchState.CANCELLING
    assert cancelling.counts == ItemCounts(running=2, succeeded=1, cancelled=4)
    assert cancelling.end_time is None
    assert await store.claim_chunk(batch.batch_id, 1) is None  # cancelled chunks stay unrun
    assert await store.cancel_batch(batch.batch_id) == cancelling  # idempotent

    # The worker learns of the cancel at its next flush and cancels the rest.
    state = await store.record_outcomes(batch.batch_id, 0, [outcome(1)], release=False)
    assert state is BatchState.CANCELLING
    state = await store.record_outcomes(batch.batch_id, 0, [outcome(2, CANCELLED)], release=True)
    assert state is BatchState.CANCELLED
    cancelled = await store.get_batch(batch.batch_id)
    assert cancelled.state is BatchState.CANCELLED
    assert cancelled.counts == ItemCounts(succeeded=2, cancelled=5)
    assert cancelled.end_time is not None


async def test_cancel_of_an_unstarted_batch_is_immediate(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    cancelled = await store.cancel_batch(batch.batch_id)
    assert cancelled.state is BatchState.CANCELLED
    assert cancelled.counts == ItemCounts(cancelled=7)
    assert cancelled.end_time is not None
    assert all([await store.claim_chunk(batch.batch_id, n) is None for n in range(3)])


async def test_cancel_leaves_a_finished_batch_alone(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch(total=2)
    await store.claim_chunk(batch.batch_id, 0)
    await store.record_outcomes(batch.batch_id, 0, [outcome(0), outcome(1)], release=True)
    done = await store.get_batch(batch.batch_id)
    assert done.state is BatchState.COMPLETED
    assert await store.cancel_batch(batch.batch_id) == done


async def test_unknown_batches_are_not_found(store: BatchStore) -> None:
    with pytest.raises(NotFound, match="batch 'nope' not found"):
        await store.get_batch("nope")
    with pytest.raises(NotFound):
        await store.cancel_batch("nope")
    with pytest.raises(NotFound):
        await store.list_items("nope", 10, "", [])
    with pytest.raises(NotFound):
        await store.record_outcomes("nope", 0, [outcome(0)], release=True)
    assert await store.claim_chunk("nope", 0) is None
    assert await store.find_request("nope") is None
