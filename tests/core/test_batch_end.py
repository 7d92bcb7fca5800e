"""`batch_finished`: logged once per end of a batch, by the call that ended it — the last
record, a cancel, the claim that cancels a dead holder's items, an expiry — and by no
call after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import structlog

from batchd.core.domain import BatchRecord, ClaimedChunk, ItemOutcome, ItemState
from batchd.core.store import BatchStore

LEASE = 60.0
NewBatch = Callable[..., Awaitable[BatchRecord]]


def outcome(index: int, state: ItemState = ItemState.SUCCEEDED) -> ItemOutcome:
    return ItemOutcome(index, state, 1, 1.0, 2.0, b"{}" if state is ItemState.SUCCEEDED else None)


async def claim(store: BatchStore, batch_id: str, chunk: int) -> ClaimedChunk:
    claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=LEASE)
    assert claimed is not None
    return claimed


async def record(store: BatchStore, claimed: ClaimedChunk, outcomes: list[ItemOutcome]) -> None:
    await store.record_outcomes(
        claimed.batch_id, claimed.chunk, outcomes, token=claimed.token, release=True
    )


def events(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [event for event in logs if event["event"] == "batch_finished"]


async def test_the_last_record_logs_the_end_once(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch(total=4, chunk_size=2)
    with structlog.testing.capture_logs() as logs:
        advance(2)
        first, second = await claim(store, batch.batch_id, 0), await claim(store, batch.batch_id, 1)
        advance(3)
        await record(store, second, [outcome(2), outcome(3, ItemState.FAILED)])
        assert events(logs) == []  # chunk 0 is still running
        await record(store, first, [outcome(0), outcome(1)])
        # A late duplicate (a stale holder's records) finds the batch ended: no event.
        await record(store, first, [outcome(0), outcome(1)])
    (event,) = events(logs)
    assert event == {
        "event": "batch_finished",
        "log_level": "info",
        "batch_id": batch.batch_id,
        "tenant": "default",
        "handler": "test.echo",
        "state": "COMPLETED",
        "total": 4,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
        "queued_seconds": 2.0,
        "running_seconds": 3.0,
        "total_seconds": 5.0,
    }


async def test_a_cancel_that_ends_the_batch_logs_it(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch(total=7)
    with structlog.testing.capture_logs() as logs:
        advance(1.5)
        await store.cancel_batch(batch.batch_id)
        await store.cancel_batch(batch.batch_id)  # idempotent, and silent
    (event,) = events(logs)
    assert (event["state"], event["cancelled"], event["total"]) == ("CANCELLED", 7, 7)
    # Never started: all of its time was queued.
    assert (event["queued_seconds"], event["running_seconds"]) == (1.5, 0.0)


async def test_the_claim_that_cancels_a_dead_holders_items_logs_the_end(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch(total=2, chunk_size=2)
    await claim(store, batch.batch_id, 0)  # its holder dies
    with structlog.testing.capture_logs() as logs:
        await store.cancel_batch(batch.batch_id)
        assert events(logs) == []  # CANCELLING: the chunk is still held
        advance(LEASE + 1)
        assert await store.claim_chunk(batch.batch_id, 0, lease_ttl=LEASE) is None
    (event,) = events(logs)
    assert (event["state"], event["cancelled"]) == ("CANCELLED", 2)


async def test_an_expiry_logs_the_end_once(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    await new_batch(total=3, completion_window=10.0)
    with structlog.testing.capture_logs() as logs:
        advance(11)
        assert await store.expire_batches() == 1
        assert await store.expire_batches() == 0
    (event,) = events(logs)
    assert (event["state"], event["expired"], event["total_seconds"]) == ("COMPLETED", 3, 11.0)
