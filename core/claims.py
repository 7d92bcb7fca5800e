"""Chunks in the hands of workers: claims under leases, renewals, outcome records, reaping.

See docs/design.md, "Reliability". A claim hands a worker a chunk's runnable items under
a lease token; the worker renews the lease while it runs them and records outcomes —
terminal ones, or failed attempts to retry later — and releases the chunk with its last
record. A chunk whose lease runs out (its worker died) is reaped: its lease goes and a
fresh job takes it over. Retries wait in the chunk's waiting set; the scripts schedule a
deferred job for them, so callers never have to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from batchd.core import codec
from batchd.core.batch_end import log_batch_end
from batchd.core.domain import BatchOptions, BatchState, ClaimedChunk, ItemOutcome, ItemState
from batchd.core.errors import NotFound
from batchd.core.scripts import Arg, BatchScope, Scripts

# Leases a reap_leases call takes at most (it loops until none is left).
_REAP_BATCH = 200


@dataclass(frozen=True)
class RecordResult:
    """What `record_outcomes` did.

    `state`: the batch state after the write (CANCELLING tells the worker to start no
    more items). `next_retry_at`: when the chunk's first waiting retry is due, if it has
    one (the store has scheduled a job for it already: this is only for logs).
    `held`: the chunk was claimed under the caller's token when the records arrived;
    False means the claim was lost (taken over, expired, cancelled, deleted): its records
    still counted item by item, but its release did nothing.
    """

    state: BatchState
    next_retry_at: float | None
    held: bool


async def claim_chunk(
    scripts: Scripts,
    scope: BatchScope,
    batch_id: str,
    chunk: int | None,
    *,
    token: str,
    now_ms: int,
    lease_ttl: float,
    queues: Sequence[str] = (),
) -> ClaimedChunk | None:
    """`chunk` None: the batch's next chunk not yet dispatched, if no other batch has a
    job in `queues` (claim_chunk.lua)."""
    claimed = await scope.run(
        scripts.claim_chunk,
        batch_id,
        now_ms,
        keys=queues,
        args=[
            -1 if chunk is None else chunk,
            token,
            now_ms + int(lease_ttl * 1000),
            int(chunk is None),
        ],
    )
    if claimed is None:
        return None
    if len(claimed) == 1:  # nothing to run, and the claim ended the batch
        log_batch_end(batch_id, claimed[0])
        return None
    raw_items, handler, options, size, runnable, attempts, taken, trace = claimed
    chunk = int(taken)
    first = chunk * int(size)
    items = codec.decode_chunk(raw_items)
    tried = {
        int(attempts[i]): codec.decode_attempt(attempts[i + 1])[0]
        for i in range(0, len(attempts), 2)
    }
    return ClaimedChunk(
        batch_id=batch_id,
        chunk=chunk,
        handler=bytes(handler).decode(),
        options=BatchOptions.from_dict(json.loads(options)),
        first_index=first,
        items=[(first + int(local), *items[int(local)]) for local in runnable],
        token=token,
        attempts=tried,
        trace_parent=bytes(trace).decode() if trace else "",
    )


async def renew_leases(
    scripts: Scripts,
    scope: BatchScope,
    claims: Sequence[tuple[str, int, str, int]],
    *,
    now_ms: int,
    ttl: float,
) -> list[BatchState | None]:
    if not claims:
        return []
    keys = scope.keys
    args: list[Arg] = [now_ms + int(ttl * 1000)]
    claim_keys: list[str] = []
    for batch_id, chunk, token, in_flight in claims:
        args += [keys.lease_member(batch_id, chunk), chunk, token, in_flight]
        claim_keys += [keys.chunk_states(batch_id), keys.started(batch_id), keys.meta(batch_id)]
    held = await scripts.renew_leases(keys=[keys.leases, *claim_keys], args=args)
    return [BatchState(int(state)) if int(state) else None for state in held]


async def record_outcomes(
    scripts: Scripts,
    scope: BatchScope,
    batch_id: str,
    chunk: int,
    outcomes: Sequence[ItemOutcome],
    *,
    token: str,
    release: bool,
    now_ms: int,
    in_flight: int = -1,
) -> RecordResult:
    entries: list[tuple[int, int, bytes, int]] = []
    for outcome in outcomes:
        if outcome.retry_at is not None and outcome.state is ItemState.PENDING:
            due = codec.to_ms(outcome.retry_at) or 0
            entries.append((outcome.index, int(outcome.state), codec.encode_attempt(outcome), due))
        elif outcome.state.is_terminal and outcome.retry_at is None:
            entries.append((outcome.index, int(outcome.state), codec.encode_outcome(outcome), 0))
        else:
            raise ValueError(
                f"outcome of item {outcome.index} is not terminal "
                "(nor PENDING with retry_at, a retry)"
            )
    # One msgpack argument (Lua's cmsgpack reads no bin type: bytes go as raw strings).
    packed: bytes = msgpack.packb(entries, use_bin_type=False)
    args: list[Arg] = [chunk, token, int(release), packed, in_flight]
    result = await scope.run(scripts.record_outcomes, batch_id, now_ms, args=args)
    if result is None:
        raise NotFound(f"batch {batch_id!r} not found")
    state, due, held, ended = result
    log_batch_end(batch_id, ended)
    return RecordResult(
        state=BatchState(int(state)),
        next_retry_at=None if due is None else int(due) / 1000,
        held=bool(int(held)),
    )


async def reap_expired_leases(scripts: Scripts, scope: BatchScope, *, now_ms: int) -> int:
    """Reaps leases expired at `now_ms`, a slice per script call; returns how many."""
    reaped = 0
    while True:
        count = int(
            await scripts.reap_leases(
                keys=[scope.keys.leases, scope.keys.queue_prefix],
                args=[now_ms, _REAP_BATCH, *scope.job_args(), scope.keys.meta("")],
            )
        )
        reaped += count
        if count < _REAP_BATCH:
            return reaped
