"""Running batches: claims, outcome records, completion and cancellation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ResponseError

from batchd.core.domain import (
    BatchRecord,
    BatchState,
    ClaimedChunk,
    ItemCounts,
    ItemOutcome,
    ItemState,
)
from batchd.core.errors import NotFound
from batchd.core.store import BatchStore

# The conftest fixture: new_batch(total=7, chunk_size=3) -> the committed batch.
NewBatch = Callable[..., Awaitable[BatchRecord]]
LEASE = 60.0

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


async def claim(store: BatchStore, batch_id: str, chunk: int) -> ClaimedChunk:
    claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=LEASE)
    assert claimed is not None
    return claimed


async def record(
    store: BatchStore,
    claimed: ClaimedChunk,
    outcomes: list[ItemOutcome],
    *,
    release: bool = False,
) -> BatchState:
    result = await store.record_outcomes(
        claimed.batch_id, claimed.chunk, outcomes, token=claimed.token, release=release
    )
    return result.state


async def test_claim_hands_out_the_chunk_and_starts_the_batch(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()  # chunks of 3, 3 and 1
    claimed = await store.claim_chunk(batch.batch_id, 1, lease_ttl=LEASE)

    assert claimed is not None
    assert claimed.token
    assert claimed.attempts == {}
    assert (claimed.batch_id, claimed.chunk, claimed.first_index) == (batch.batch_id, 1, 3)
    assert claimed.handler == "test.echo"
    assert claimed.options == batch.options
    assert claimed.items == [(i, f"item-{i}", b'{"n":%d}' % i) for i in (3, 4, 5)]
    running = await store.get_batch(batch.batch_id)
    assert running.state is BatchState.RUNNING
    assert running.start_time is not None
    assert running.counts == ItemCounts(pending=4, claimed=3)  # none started yet

    last = await claim(store, batch.batch_id, 2)
    assert last.token != claimed.token
    assert last.items == [(6, "item-6", b'{"n":6}')]
    assert await counts(store, batch.batch_id) == ItemCounts(pending=3, claimed=4)


async def test_records_move_the_counts(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    claimed = await claim(store, batch.batch_id, 0)
    state = await record(store, claimed, [outcome(0), outcome(1, FAILED)])
    assert state is BatchState.RUNNING
    assert await counts(store, batch.batch_id) == ItemCounts(
        pending=4, claimed=1, succeeded=1, failed=1
    )


async def test_a_duplicate_record_counts_nothing_twice(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch()
    claimed = await claim(store, batch.batch_id, 0)
    await record(store, claimed, [outcome(0), outcome(1)])
    before = await counts(store, batch.batch_id)

    # A flush repeated after a crash, even with another verdict: the first one stands.
    await record(store, claimed, [outcome(1, FAILED)])
    assert await counts(store, batch.batch_id) == before
    items, _ = await store.list_items(batch.batch_id, 2, "", [])
    assert [i.state for i in items] == [OK, OK]

    # The worker died: once its lease ran out the chunk is taken over, with only the
    # unrecorded item, and no new count.
    advance(LEASE)
    again = await claim(store, batch.batch_id, 0)
    assert [index for index, _, _ in again.items] == [2]
    assert await counts(store, batch.batch_id) == before


async def test_the_batch_completes_when_every_item_is_terminal(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    states = []
    for chunk in range(3):
        claimed = await claim(store, batch.batch_id, chunk)
        results = [outcome(index, FAILED if index == 4 else OK) for index, _, _ in claimed.items]
        states.append(await record(store, claimed, results, release=True))

    assert states == [BatchState.RUNNING, BatchState.RUNNING, BatchState.COMPLETED]
    done = await store.get_batch(batch.batch_id)
    assert done.state is BatchState.COMPLETED
    assert done.counts == ItemCounts(succeeded=6, failed=1)
    assert done.end_time is not None
    assert done.start_time is not None
    assert done.end_time >= done.start_time
    # A late job: nothing to do.
    assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE) is None


async def test_an_unclaimed_chunk_takes_no_outcomes(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    result = await store.record_outcomes(
        batch.batch_id, 1, [outcome(3)], token="made-up", release=True
    )
    assert (result.state, result.held) == (BatchState.QUEUED, False)
    assert await counts(store, batch.batch_id) == ItemCounts(pending=7)


async def test_an_outcome_outside_its_chunk_is_refused(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()
    claimed = await claim(store, batch.batch_id, 0)
    with pytest.raises(ResponseError, match="not in chunk"):
        await record(store, claimed, [outcome(0), outcome(3)])
    assert await counts(store, batch.batch_id) == ItemCounts(pending=4, claimed=3)


async def test_items_in_flight_are_running_and_the_rest_of_a_claim_claimed(
    store: BatchStore, new_batch: NewBatch
) -> None:
    batch = await new_batch()  # 7 items, chunks of 3
    bid = batch.batch_id
    claimed = await claim(store, bid, 0)
    # The holder reports its items in flight with its records and its renewals.
    await store.record_outcomes(
        bid, 0, [outcome(0)], token=claimed.token, release=False, in_flight=2
    )
    assert await counts(store, bid) == ItemCounts(pending=4, running=2, succeeded=1)
    await store.renew_leases([(bid, 0, claimed.token, 1)], LEASE)
    assert await counts(store, bid) == ItemCounts(pending=4, running=1, claimed=1, succeeded=1)
    # Never more than the chunk's items not recorded; another token reports nothing.
    await store.record_outcomes(
        bid, 0, [outcome(1)], token=claimed.token, release=False, in_flight=5
    )
    assert await counts(store, bid) == ItemCounts(pending=4, running=1, succeeded=2)
    await store.renew_leases([(bid, 0, "stale", 0)], LEASE)
    assert (await counts(store, bid)).running == 1
    # A release, or a new claim, starts again from nothing in flight.
    await store.record_outcomes(bid, 0, [], token=claimed.token, release=True, in_flight=1)
    assert await counts(store, bid) == ItemCounts(pending=5, succeeded=2)
    again = await claim(store, bid, 0)
    assert await counts(store, bid) == ItemCounts(pending=4, claimed=1, succeeded=2)
    await store.renew_leases([(bid, 0, again.token, 1)], LEASE)
    assert (await counts(store, bid)).running == 1
    await store.claim_chunk(bid, 0, lease_ttl=LEASE)  # a live lease: nothing handed out
    assert (await counts(store, bid)).running == 1


async def test_only_terminal_outcomes_are_recorded(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    for state in (ItemState.RUNNING, ItemState.PENDING):  # PENDING: a retry needs retry_at
        with pytest.raises(ValueError, match="not terminal"):
            await store.record_outcomes(
                batch.batch_id, 0, [outcome(0, state)], token="t", release=False
            )


async def test_cancel_waits_for_the_claimed_chunk(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch()
    claimed = await claim(store, batch.batch_id, 0)
    await record(store, claimed, [outcome(0)])

    cancelling = await store.cancel_batch(batch.batch_id)
    assert cancelling.state is BatchState.CANCELLING
    assert cancelling.counts == ItemCounts(claimed=2, succeeded=1, cancelled=4)
    assert cancelling.end_time is None
    # cancelled chunks stay unrun
    assert await store.claim_chunk(batch.batch_id, 1, lease_ttl=LEASE) is None
    assert await store.cancel_batch(batch.batch_id) == cancelling  # idempotent

    # The worker learns of the cancel at its next flush and cancels the rest.
    state = await record(store, claimed, [outcome(1)])
    assert state is BatchState.CANCELLING
    state = await record(store, claimed, [outcome(2, CANCELLED)], release=True)
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
    assert all(
        [await store.claim_chunk(batch.batch_id, n, lease_ttl=LEASE) is None for n in range(3)]
    )


async def test_cancel_leaves_a_finished_batch_alone(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch(total=2)
    claimed = await claim(store, batch.batch_id, 0)
    await record(store, claimed, [outcome(0), outcome(1)], release=True)
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
        await store.record_outcomes("nope", 0, [outcome(0)], token="t", release=True)
    assert await store.claim_chunk("nope", 0, lease_ttl=LEASE) is None
    assert await store.renew_leases([("nope", 0, "t", 0)], LEASE) == [None]
    with pytest.raises(NotFound):
        await store.retry_items("nope", [], "")
    with pytest.raises(NotFound):
        await store.retry_items("nope", ["item-0"], "")
    with pytest.raises(NotFound):
        await store.delete_batch("nope")
