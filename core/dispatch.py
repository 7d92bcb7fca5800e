"""Dispatch control of a batch: pause, resume and option updates (priority, rates).

See docs/design.md, "Flow control: dispatch". A paused batch starts nothing: a claim of
one of its chunks parks the chunk, holders hand back what they have not started, and
resume enqueues every parked chunk again. An update is a compare-and-set of the batch's
options (so concurrent updates never lose each other's fields); a new priority moves the
batch's dispatched jobs in the queue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from batchd.core import codec
from batchd.core.batch_end import log_batch_end
from batchd.core.domain import UPDATABLE_OPTIONS, BatchOptions, BatchState
from batchd.core.errors import FailedPrecondition, NotFound
from batchd.core.scripts import BatchScope, Scripts

_UPDATE_ATTEMPTS = 10


def _missing(batch_id: str) -> NotFound:
    return NotFound(f"batch {batch_id!r} not found")


def _not_open(batch_id: str, state: BatchState, verb: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"batch {batch_id!r} is {state.name}: only a queued, running or paused batch can be {verb}"
    )


async def pause_batch(scripts: Scripts, scope: BatchScope, batch_id: str, *, now_ms: int) -> None:
    state = await scope.run(scripts.pause_batch, batch_id, now_ms)
    if state is None:
        raise _missing(batch_id)
    if BatchState(int(state)) is not BatchState.PAUSED:
        raise _not_open(batch_id, BatchState(int(state)), "paused")


async def resume_batch(scripts: Scripts, scope: BatchScope, batch_id: str, *, now_ms: int) -> None:
    reply = await scope.run(scripts.resume_batch, batch_id, now_ms)
    if reply is None:
        raise _missing(batch_id)
    log_batch_end(batch_id, reply[2])
    before = BatchState(int(reply[0]))
    if before not in (BatchState.PAUSED, BatchState.QUEUED, BatchState.RUNNING):
        raise _not_open(batch_id, before, "resumed")


async def update_options(
    redis: Redis,
    scripts: Scripts,
    scope: BatchScope,
    batch_id: str,
    changes: Mapping[str, Any],
    *,
    now_ms: int,
) -> None:
    """Sets the `changes` (names in UPDATABLE_OPTIONS) in the batch's options."""
    unknown = set(changes) - set(UPDATABLE_OPTIONS)
    if unknown:
        raise ValueError(f"options {sorted(unknown)} cannot be updated")
    for _ in range(_UPDATE_ATTEMPTS):
        raw = await redis.hget(scope.keys.meta(batch_id), "options")  # type: ignore[misc]
        if raw is None:
            raise _missing(batch_id)
        options = BatchOptions.from_dict(json.loads(raw))
        new = replace(options, **changes)
        encoded = codec.canonical_json(new.to_dict())
        reply = await scope.run(
            scripts.update_batch, batch_id, now_ms, args=[raw, encoded, new.priority]
        )
        kind = bytes(reply[0]).decode()
        if kind == "ok":
            return
        if kind == "missing":
            raise _missing(batch_id)
        if kind == "state":
            raise _not_open(batch_id, BatchState(int(reply[1])), "updated")
        # "conflict": the options changed since we read them; read them again.
    raise WatchError(f"the options of batch {batch_id!r} kept changing")
