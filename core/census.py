"""A census of the service in Redis, for the server's metrics: batches open by state,
items pending by priority, chunk jobs queued and live workers per handler.

It reads the indexes batchd keeps anyway, never the keyspace: the open batches are the
members of `deadlines` (every unfinished batch, +inf for one without a completion
window), the handlers those of `handlers`. Per census, in four round trips:

1. GET pending, ZCARD batches, ZCARD deadlines, ZCARD leases, HKEYS handlers,
   ZCOUNT workers (the live ones);
2. ZRANGE deadlines 0 <limit - 1>: the open batches, nearest deadline first;
3. per handler, ZCARD of its queue and ZCOUNT of its live workers;
4. per open batch read, HMGET of its meta (state, priority, counts), pipelined in
   blocks of `BLOCK`.

So a census costs 2 commands per handler plus one per open batch up to `limit`; beyond
it, `open_batches` is still exact but the per-state and per-priority figures count only
the `limit` batches nearest their deadline (`complete` says which).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from batchd.core.domain import BatchState
from batchd.core.keys import Keys

__all__ = ["BLOCK", "Census", "take_census"]

# HMGETs per pipeline round trip.
BLOCK = 1000
_FIELDS = ("state", "prio", "total", "n_run", "n_ok", "n_fail", "n_cancel", "n_exp")


@dataclass(frozen=True)
class Census:
    pending_items: int  # the admission counter: items not yet terminal, every batch
    batches: int  # batches kept (any state, until their retention ends)
    open_batches: int
    claimed_chunks: int  # chunks held under a lease
    live_workers: int
    open_by_state: Counter[BatchState] = field(default_factory=Counter)
    pending_by_priority: Counter[int] = field(default_factory=Counter)
    queued_jobs: dict[str, int] = field(default_factory=dict)  # by handler
    live_workers_by_handler: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # every open batch was read


async def take_census(
    redis: Redis, keys: Keys, *, now_ms: int, worker_ttl: float, limit: int
) -> Census:
    """The census (see the module docstring for what it reads); `limit`: open batches
    read at most."""
    since = now_ms - int(worker_ttl * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.pending)
        pipe.zcard(keys.batches)
        pipe.zcard(keys.deadlines)
        pipe.zcard(keys.leases)
        pipe.hkeys(keys.handlers)
        pipe.zcount(keys.workers, since, "+inf")
        pipe.zrange(keys.deadlines, 0, max(limit, 1) - 1)
        pending, batches, open_count, leases, names, live, open_ids = await pipe.execute()
    handlers = sorted(bytes(name).decode() for name in names)
    async with redis.pipeline(transaction=False) as pipe:
        for name in handlers:
            pipe.zcard(keys.queue(name))
            pipe.zcount(keys.handler_workers(name), since, "+inf")
        counts = await pipe.execute() if handlers else []
    by_state: Counter[BatchState] = Counter()
    by_priority: Counter[int] = Counter()
    ids = [bytes(member).decode() for member in open_ids]
    for start in range(0, len(ids), BLOCK):
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id in ids[start : start + BLOCK]:
                pipe.hmget(keys.meta(batch_id), list(_FIELDS))
            metas = await pipe.execute()
        for state, prio, *figures in metas:
            if state is None:  # deleted meanwhile
                continue
            by_state[BatchState(int(state))] += 1
            total, *taken = (int(value or 0) for value in figures)
            left = total - sum(taken)
            if left > 0:
                by_priority[int(prio or 0)] += left
    return Census(
        pending_items=int(pending or 0),
        batches=int(batches),
        open_batches=int(open_count),
        claimed_chunks=int(leases),
        live_workers=int(live),
        open_by_state=by_state,
        pending_by_priority=by_priority,
        queued_jobs={name: int(n) for name, n in zip(handlers, counts[::2], strict=True)},
        live_workers_by_handler={
            name: int(n) for name, n in zip(handlers, counts[1::2], strict=True)
        },
        complete=len(ids) >= int(open_count),
    )
