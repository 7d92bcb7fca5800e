"""Throttling in Redis: start-rate limits shared by every worker, with adaptive
back-off, and per-batch concurrency slots. docs/design.md, "Flow control: rates and
concurrency", has the rules; core/lua/_flow.lua the bucket arithmetic.

Rate limits are token buckets (items started per second), taken in blocks by one script
call (`take_permits.lua`) over every bucket an item's start needs (`buckets_for`); a
slow-down cuts the last of them for every worker (`slow_down.lua`). `max_concurrent` is
held as slots per chunk holder (`hold_slots.lua`), live only while the chunk's lease is,
so a crashed worker's slots come free with its lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchd.core.domain import BatchOptions, BatchState
from batchd.core.keys import Keys
from batchd.core.scripts import Arg, BatchScope, Scripts

__all__ = ["Bucket", "Grant", "buckets_for", "hold_slots", "slow_down", "take_permits"]


@dataclass(frozen=True)
class Bucket:
    """A token bucket: its key, the caller's configured rate (items/s, 0: none — adaptive
    only) and burst (0: max(1, rate / 10)); `shared`: a key of several batches, whose
    lowest rate wins."""

    key: str
    rate: float = 0.0
    burst: int = 0
    shared: bool = False

    def args(self) -> list[Arg]:
        return [repr(float(self.rate)), int(self.burst), int(self.shared)]


@dataclass(frozen=True)
class Grant:
    """What a take got. `granted` permits, to use at once — or, reserved, at once after
    `wait` seconds, not before; none: ask again after `wait` seconds. `free_for` > 0:
    every bucket is unlimited — start freely that many seconds, then report the starts
    beyond `granted` (`used`) with the next take. `rate`: the slowest bucket's effective
    rate (0: unlimited). `now`: the buckets' clock (Redis'), seconds."""

    granted: int
    wait: float
    free_for: float
    rate: float
    now: float


def buckets_for(
    keys: Keys, batch_id: str, options: BatchOptions, item_key: str | None = None
) -> list[Bucket]:
    """The buckets an item's start takes from; the last is the one a slow-down cuts."""
    rate, burst = max(0.0, options.max_per_second), max(0, options.burst)
    if options.rate_limit_key:
        return [Bucket(keys.rate_key(options.rate_limit_key), rate, burst, shared=True)]
    own = Bucket(keys.rate(batch_id), rate, burst)
    if item_key:
        shared = Bucket(keys.rate_key(item_key), shared=True)
        return [own, shared] if rate > 0 else [shared]
    return [own]


def _ms(now: float | None) -> str:
    return "" if now is None else repr(round(now * 1000, 3))


async def take_permits(
    scripts: Scripts,
    buckets: Sequence[Bucket],
    want: int,
    used: int = 0,
    now: float | None = None,
    ok: int = 0,
) -> Grant:
    args: list[Arg] = [_ms(now), max(0, want), max(0, used), max(0, ok)]
    for bucket in buckets:
        args.extend(bucket.args())
    granted, wait_ms, free_ms, rate, now_ms = await scripts.take_permits(
        keys=[b.key for b in buckets], args=args
    )
    return Grant(
        granted=int(granted),
        wait=int(wait_ms) / 1000,
        free_for=int(free_ms) / 1000,
        rate=float(rate),
        now=float(now_ms) / 1000,
    )


async def slow_down(
    scripts: Scripts,
    bucket: Bucket,
    started: float | None = None,
    now: float | None = None,
    used: int = 0,
    ok: int = 0,
    retry_after: float | None = None,
) -> tuple[bool, float]:
    """Cuts the bucket's rate; (whether it dropped, its effective rate now). `started`:
    when the item that saw the overload started (the buckets' clock, seconds); `used`,
    `ok`: counts not yet reported (see take_permits); `retry_after` (seconds): start
    nothing on the bucket for that long."""
    pause = "" if retry_after is None else round(retry_after * 1000)
    cut, rate = await scripts.slow_down(
        keys=[bucket.key],
        args=[_ms(now), *bucket.args(), _ms(started), max(0, used), max(0, ok), pause],
    )
    return bool(int(cut)), float(rate)


async def hold_slots(
    scripts: Scripts,
    scope: BatchScope,
    batch_id: str,
    chunk: int,
    token: str,
    count: int,
    limit: int,
    *,
    now_ms: int,
) -> tuple[int, BatchState | None]:
    held, state = await scope.run(
        scripts.hold_slots,
        batch_id,
        now_ms,
        keys=[scope.keys.slots(batch_id)],
        args=[chunk, token, max(0, count), max(0, limit)],
    )
    return int(held), BatchState(int(state)) if int(state) else None
