"""Whatever happens around it, every item is in exactly one state and the counts agree.

Seeded random interleavings of everything workers and users do — claims, records from
current, stale and foreign tokens, retries, releases, lost leases, reaping, cancels,
expiry, redrives — with the counts checked against the items after every step; then
the batch is driven to its end, which it must reach.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable

import pytest

from batchd.core.domain import BatchRecord, ItemCounts, ItemOutcome, ItemState
from batchd.core.errors import FailedPrecondition, InvalidRequest
from batchd.core.store import BatchStore

NewBatch = Callable[..., Awaitable[BatchRecord]]
Consistent = Callable[[str], Awaitable[ItemCounts]]
Advance = Callable[[float], float]

TOTAL, SIZE, CHUNKS = 10, 3, 4
LEASE = 5.0
TERMINAL = [ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED, ItemState.EXPIRED]


def outcome(rng: random.Random, index: int, now: float) -> ItemOutcome:
    if rng.random() < 0.4:
        return ItemOutcome(
            index, ItemState.PENDING, rng.randint(1, 3), None, None, error_code=14,
            error_message="again", retry_at=now + rng.choice([-1.0, 0.0, 2.0, 7.0]),
        )  # fmt: skip
    state = rng.choice(TERMINAL[:3])
    return ItemOutcome(index, state, 1, None, None)


@pytest.mark.parametrize("seed", range(8))
async def test_random_interleavings_keep_the_counts_true(
    seed: int,
    store: BatchStore,
    new_batch: NewBatch,
    consistent: Consistent,
    advance: Advance,
) -> None:
    rng = random.Random(seed)
    batch = await new_batch(TOTAL, chunk_size=SIZE, completion_window=120.0)
    bid = batch.batch_id
    tokens: dict[int, list[str]] = {n: ["never-claimed"] for n in range(CHUNKS)}

    for _ in range(200):
        n = rng.randrange(CHUNKS)
        items = range(n * SIZE, min((n + 1) * SIZE, TOTAL))
        roll = rng.random()
        if roll < 0.25:
            claimed = await store.claim_chunk(bid, n, lease_ttl=LEASE)
            if claimed is not None:
                tokens[n].append(claimed.token)
        elif roll < 0.6:
            token = rng.choice(tokens[n][-2:])  # mostly the holder's, sometimes stale
            picked = rng.sample(list(items), rng.randint(0, len(items)))
            now = store.clock()
            await store.record_outcomes(
                bid,
                n,
                [outcome(rng, i, now) for i in picked],
                token=token,
                release=rng.random() < 0.3,
            )
        elif roll < 0.75:
            advance(rng.choice([0.5, 2.0, 6.0]))
        elif roll < 0.82:
            claims = [(bid, c, tokens[c][-1], 0) for c in range(CHUNKS)]
            await store.renew_leases(claims, LEASE)
        elif roll < 0.9:
            await store.reap_expired_leases()
        elif roll < 0.92:
            await store.cancel_batch(bid)
        elif roll < 0.94:
            advance(60)
            await store.expire_batches()
        elif roll < 0.97:
            ids = [f"item-{i}" for i in rng.sample(range(TOTAL), 3)]
            with contextlib.suppress(FailedPrecondition, InvalidRequest):
                await store.retry_items(bid, ids, "")
        else:
            with contextlib.suppress(FailedPrecondition):  # cancelling
                await store.retry_items(bid, [], "")
        await consistent(bid)

    # Drive it home: workers come back until the batch ends.
    for _ in range(50):
        if (await store.get_batch(bid)).state.is_terminal:
            break
        advance(LEASE + 8)
        await store.reap_expired_leases()
        for n in range(CHUNKS):
            claimed = await store.claim_chunk(bid, n, lease_ttl=LEASE)
            if claimed is None:
                continue
            done = [ItemOutcome(i, ItemState.SUCCEEDED, 1, None, None) for i, _, _ in claimed.items]
            await store.record_outcomes(bid, n, done, token=claimed.token, release=True)
        await consistent(bid)
    final = await store.get_batch(bid)
    assert final.state.is_terminal
    counts = await consistent(bid)
    assert counts.finished == TOTAL
