"""The rate-limit buckets and concurrency slots (core/lua/_flow.lua, take_permits.lua,
slow_down.lua, hold_slots.lua), on an explicit clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from batchd.core.domain import BatchOptions, BatchRecord, ItemOutcome, ItemState
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.core.throttle import Bucket, Grant, buckets_for

NewBatch = Callable[..., Awaitable[BatchRecord]]
T0 = 1_800_000_000.0


def bucket(keys: Keys, rate: float, burst: int = 0, name: str = "api") -> Bucket:
    return Bucket(keys.rate_key(name), rate, burst, shared=True)


async def test_a_fresh_bucket_grants_its_burst_then_reserves_blocks_at_the_rate(
    store: BatchStore, keys: Keys
) -> None:
    b = bucket(keys, 200, burst=20)
    first = await store.take_permits([b], 100, now=T0)
    assert (first.granted, first.wait) == (10, 0)  # a block: rate x 0.05
    second = await store.take_permits([b], 100, now=T0)
    assert (second.granted, second.wait) == (10, 0)
    # Then blocks reserved one after the other, each usable once its tokens are there,
    # up to 250 ms ahead.
    waits = [(await store.take_permits([b], 100, now=T0)).wait for _ in range(5)]
    assert waits == [0.05, 0.1, 0.15, 0.2, 0.25]
    full = await store.take_permits([b], 100, now=T0)
    assert (full.granted, full.wait) == (0, 0.05)  # ask again when a reservation will do
    assert full.rate == 200
    assert await store.take_permits([b], 100, now=T0 + 0.05) == Grant(10, 0.25, 0, 200, T0 + 0.05)


async def test_grants_never_exceed_the_rate_plus_burst(store: BatchStore, keys: Keys) -> None:
    b = bucket(keys, 200, burst=20)
    now, granted, calls = T0, 0, 0
    while now < T0 + 10:
        grant = await store.take_permits([b], 7, now=now)
        calls += 1
        assert grant.granted <= 7
        usable = now + grant.wait
        granted += grant.granted
        assert granted <= 20 + 200 * (usable - T0) + 1e-6
        now = usable + (0.003 if grant.granted else 0)
    assert granted >= 200 * 10 - 20
    print(f"\nbucket 200/s, burst 20: {granted} permits in 10 s, {calls} calls")


async def test_small_rates_wait_for_single_permits(store: BatchStore, keys: Keys) -> None:
    b = bucket(keys, 2)  # burst 0: max(1, rate / 10) = 1
    assert (await store.take_permits([b], 5, now=T0)).granted == 1
    grant = await store.take_permits([b], 5, now=T0)
    assert (grant.granted, grant.wait) == (0, 0.25)  # then a reservation will do
    reserved = await store.take_permits([b], 5, now=T0 + 0.25)
    assert (reserved.granted, reserved.wait) == (1, 0.25)


async def test_several_buckets_grant_together(store: BatchStore, keys: Keys) -> None:
    fast, slow = bucket(keys, 1000, 100, "fast"), bucket(keys, 100, 5, "slow")
    grant = await store.take_permits([fast, slow], 50, now=T0)
    assert grant.granted == 5
    assert grant.rate == 100
    grant = await store.take_permits([fast, slow], 50, now=T0)
    assert grant.granted == 5  # reserved: the slow bucket's tokens come in 50 ms
    assert grant.wait == 0.05
    assert (await store.take_permits([fast], 1000, now=T0)).granted == 50  # 90 left


async def test_a_shared_key_runs_at_the_lowest_rate_of_its_batches(
    store: BatchStore, keys: Keys
) -> None:
    await store.take_permits([bucket(keys, 100)], 1, now=T0)
    assert (await store.take_permits([bucket(keys, 300)], 0, now=T0 + 1)).rate == 100
    # The 100/s batch goes quiet: after 10 s its rate no longer holds the key down.
    assert (await store.take_permits([bucket(keys, 300)], 1, now=T0 + 11)).rate == 300


async def test_unlimited_buckets_grant_free_periods(store: BatchStore, keys: Keys) -> None:
    grant = await store.take_permits([bucket(keys, 0)], 8, now=T0)
    assert (grant.granted, grant.free_for, grant.rate) == (8, 0.1, 0.0)


async def test_slow_down_halves_then_recovers_additively(store: BatchStore, keys: Keys) -> None:
    b = bucket(keys, 200, burst=20)
    await store.take_permits([b], 10, now=T0)
    cut, rate = await store.slow_down(b, started=T0, now=T0 + 1)
    assert cut
    assert rate == pytest.approx(140)
    # Another signal from an item started before the cut: the cut already answered it.
    cut, rate = await store.slow_down(b, started=T0 + 0.5, now=T0 + 1.1)
    assert not cut
    assert rate == pytest.approx(141)
    # +5% of 200/s per second, up to the configured rate.
    assert (await store.take_permits([b], 0, now=T0 + 3)).rate == pytest.approx(160)
    assert (await store.take_permits([b], 0, now=T0 + 7)).rate == pytest.approx(200)
    assert (await store.take_permits([b], 0, now=T0 + 60)).rate == pytest.approx(200)
    # A later overload cuts again, from where the rate is.
    cut, rate = await store.slow_down(b, started=T0 + 60, now=T0 + 61)
    assert cut
    assert rate == pytest.approx(140)
    cut, rate = await store.slow_down(b, started=T0 + 61.5, now=T0 + 62)
    assert cut
    assert rate == pytest.approx((140 + 10) * 0.7)


async def test_a_slowed_bucket_grants_at_the_lower_rate(store: BatchStore, keys: Keys) -> None:
    b = bucket(keys, 100, burst=10)
    await store.take_permits([b], 100, now=T0)  # the burst, spent
    await store.slow_down(b, now=T0)  # 70/s, burst capped at 7
    now, granted = T0, 0
    while now < T0 + 1:
        grant = await store.take_permits([b], 100, now=now)
        now += grant.wait or 0.001
        if now <= T0 + 1:
            granted += grant.granted
    # 70/s growing by 5/s per second: about 72 in the first second.
    assert 68 <= granted <= 75


async def test_an_unlimited_key_backs_off_from_its_observed_rate(
    store: BatchStore, keys: Keys
) -> None:
    b = bucket(keys, 0)
    for i in range(10):  # 400 starts a second reported over one second
        await store.take_permits([b], 1, used=40, now=T0 + i * 0.1)
    cut, rate = await store.slow_down(b, now=T0 + 1)
    assert cut
    assert 250 <= rate <= 300
    grant = await store.take_permits([b], 100, now=T0 + 1)
    assert grant.free_for == 0
    assert grant.wait > 0  # limited now, starting empty: a block only for later
    # It recovers by 5% of the rate it was cut from per second; at twice that, it is
    # unlimited again.
    recovered = rate + 10 * 0.05 * rate / 0.7
    assert (await store.take_permits([b], 0, now=T0 + 11)).rate == pytest.approx(recovered)
    assert (await store.take_permits([b], 0, now=T0 + 60)).rate == 0


async def test_retry_after_holds_off_further_cuts_and_pauses_a_first_contact(
    store: BatchStore, keys: Keys
) -> None:
    limited = bucket(keys, 100, name="limited")
    await store.take_permits([limited], 1, now=T0)
    cut, rate = await store.slow_down(limited, retry_after=2, now=T0 + 1)
    assert cut
    assert rate == pytest.approx(70)
    # Within the Retry-After, later signals (even of items started after) change nothing.
    cut, _ = await store.slow_down(limited, started=T0 + 1.5, now=T0 + 2)
    assert not cut
    assert (await store.take_permits([limited], 1, now=T0 + 2)).granted == 1  # not paused
    cut, _ = await store.slow_down(limited, started=T0 + 2.5, now=T0 + 3)
    assert cut

    unlimited = bucket(keys, 0, name="unlimited")
    await store.take_permits([unlimited], 50, now=T0)
    await store.slow_down(unlimited, retry_after=1, now=T0 + 0.5)
    grant = await store.take_permits([unlimited], 5, now=T0 + 0.5)
    assert grant.granted == 0  # nothing starts until the Retry-After has passed
    assert (await store.take_permits([unlimited], 5, now=T0 + 1)).granted == 0
    after = await store.take_permits([unlimited], 5, now=T0 + 1.6)
    assert after.granted >= 1
    assert after.wait == 0


async def test_slow_down_never_goes_below_one_per_second(store: BatchStore, keys: Keys) -> None:
    b = bucket(keys, 2)
    for i in range(5):
        _, rate = await store.slow_down(b, now=T0 + i)
    assert rate == 1.0


def test_which_buckets_an_item_takes_from() -> None:
    keys = Keys("p:")
    assert buckets_for(keys, "b1", BatchOptions(max_per_second=5, rate_limit_key="k")) == [
        Bucket("p:rate:{k}", 5, 0, shared=True)
    ]
    assert buckets_for(keys, "b1", BatchOptions(max_per_second=5, burst=3)) == [
        Bucket("p:b:{b1}:rate", 5, 3)
    ]
    assert buckets_for(keys, "b1", BatchOptions(), "host:h:443") == [
        Bucket("p:rate:{host:h:443}", shared=True)
    ]
    assert buckets_for(keys, "b1", BatchOptions(max_per_second=5), "host:h:443") == [
        Bucket("p:b:{b1}:rate", 5),
        Bucket("p:rate:{host:h:443}", shared=True),
    ]


async def test_effective_rate_of_a_batch(store: BatchStore, new_batch: NewBatch) -> None:
    batch = await new_batch(3)
    assert await store.effective_rate(batch) == 0
    limited = BatchRecord(**{**batch.__dict__, "options": BatchOptions(max_per_second=50)})
    assert await store.effective_rate(limited, now=T0) == 50
    await store.slow_down(buckets_for(store.keys, batch.batch_id, limited.options)[0], now=T0)
    assert await store.effective_rate(limited, now=T0) == pytest.approx(35)


async def test_slots_are_shared_by_holders_and_die_with_their_lease(
    store: BatchStore, new_batch: NewBatch, advance: Callable[[float], float]
) -> None:
    batch = await new_batch(9, chunk_size=3)
    bid = batch.batch_id
    a = await store.claim_chunk(bid, 0, lease_ttl=5)
    b = await store.claim_chunk(bid, 1, lease_ttl=5)
    assert a is not None
    assert b is not None
    assert (await store.hold_slots(bid, 0, a.token, 3, limit=5))[0] == 3
    assert (await store.hold_slots(bid, 1, b.token, 3, limit=5))[0] == 2
    assert (await store.hold_slots(bid, 1, b.token, 3, limit=5))[0] == 2
    assert (await store.hold_slots(bid, 0, a.token, 1, limit=5))[0] == 1  # gives two back
    assert (await store.hold_slots(bid, 1, b.token, 3, limit=5))[0] == 3
    assert (await store.hold_slots(bid, 0, "stale", 3, limit=5))[0] == 0  # not the holder
    # Chunk 1's holder dies: its slots go with its lease.
    advance(5)
    await store.renew_leases([(bid, 0, a.token, 0)], 5)
    assert (await store.hold_slots(bid, 0, a.token, 5, limit=5))[0] == 5
    # A release ends the holding too.
    done = ItemOutcome(
        index=0, state=ItemState.SUCCEEDED, attempts=1, start_time=None, end_time=None
    )
    await store.record_outcomes(bid, 0, [done], token=a.token, release=True)
    c = await store.claim_chunk(bid, 1, lease_ttl=5)
    assert c is not None
    assert (await store.hold_slots(bid, 1, c.token, 5, limit=5))[0] == 5
