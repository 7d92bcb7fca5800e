"""The ends of a batch: completion windows, redrives, deletion and the pruned index.

See docs/design.md, "Reliability". A batch past its completion window is expired by
`expire_batches` (maintenance, run by every process); a finished batch keeps its keys
for the retention period, and may run again when its FAILED and EXPIRED items are
redriven (`retry_items`), or be deleted at once (`delete_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from batchd.core.batch_end import log_batch_end
from batchd.core.domain import ItemState
from batchd.core.errors import FailedPrecondition, FieldViolation, InvalidRequest, NotFound
from batchd.core.scripts import Arg, BatchScope, Scripts

# Deadlines an expire_batches pass reads at once (it loops until none is due).
_EXPIRE_BATCH = 100
# Violations a refused redrive names at most.
_MAX_VIOLATIONS = 100


async def expire_batches(redis: Redis, scripts: Scripts, scope: BatchScope, *, now_ms: int) -> int:
    """Expires every unfinished batch whose deadline is at or before `now_ms`; returns how
    many expired. Safe to run in many processes at once (the script decides)."""
    expired = 0
    while True:
        due = await redis.zrangebyscore(scope.keys.deadlines, "-inf", now_ms, 0, _EXPIRE_BATCH)
        for member in due:
            batch_id = bytes(member).decode()
            ended = await scope.run(scripts.expire_batch, batch_id, now_ms)
            if ended:
                expired += 1
                log_batch_end(batch_id, ended)
        if len(due) < _EXPIRE_BATCH:
            return expired


async def retry_items(
    redis: Redis,
    scripts: Scripts,
    scope: BatchScope,
    batch_id: str,
    custom_ids: Sequence[str],
    request_id: str,
    *,
    now_ms: int,
    window: float,
) -> tuple[str, int, bool]:
    """Redrives items; returns (batch id the result is for, requeued, replayed).

    `window`: the batch's completion window (seconds; 0: no deadline) for its new deadline.
    """
    keys = scope.keys
    if request_id:
        prior = await redis.get(keys.redrive(request_id))
        if prior is not None:
            return _replay(prior, batch_id)
    indexes: list[int] = []
    positions: list[int] = []  # the custom_ids position of each index passed
    if custom_ids:
        found = await redis.hmget(keys.ids(batch_id), list(custom_ids))  # type: ignore[misc]
        missing = [
            FieldViolation(f"custom_ids[{i}]", f"no item {custom_id!r} in the batch")
            for i, (custom_id, index) in enumerate(zip(custom_ids, found, strict=True))
            if index is None
        ]
        if missing and await redis.exists(keys.meta(batch_id)):
            raise _invalid(missing)
        seen: set[int] = set()
        for position, index in enumerate(found):
            if index is not None and int(index) not in seen:
                seen.add(int(index))
                indexes.append(int(index))
                positions.append(position)
    has_request = bool(request_id)
    args: list[Arg] = [int(has_request), int(window * 1000), scope.retention_ms, *indexes]
    redrive_key = keys.redrive(request_id) if has_request else keys.meta(batch_id)
    reply = await scope.run(scripts.retry_items, batch_id, now_ms, keys=[redrive_key], args=args)
    kind = bytes(reply[0]).decode()
    if kind == "ok":
        return batch_id, int(reply[1]), False
    if kind == "replay":
        return _replay(reply[1], batch_id)
    if kind == "missing":
        raise NotFound(f"batch {batch_id!r} not found")
    if kind == "cancelling":
        raise FailedPrecondition(f"batch {batch_id!r} is being cancelled")
    bad = [(int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2)]
    raise _invalid(
        [
            FieldViolation(
                f"custom_ids[{positions[at]}]",
                f"item {custom_ids[positions[at]]!r} is {ItemState(state).name}: "
                "only FAILED and EXPIRED items can be retried",
            )
            for at, state in bad
        ]
    )


def _replay(stored: bytes, batch_id: str) -> tuple[str, int, bool]:
    requeued, _, original = bytes(stored).decode().partition(":")
    if original != batch_id:
        raise InvalidRequest.for_field(
            "request_id", f"already used to retry the items of batch {original!r}"
        )
    return original, int(requeued), True


def _invalid(violations: list[FieldViolation]) -> InvalidRequest:
    violations = violations[:_MAX_VIOLATIONS]
    first = violations[0]
    return InvalidRequest(f"{first.field}: {first.description}", violations)


async def delete_batch(scripts: Scripts, scope: BatchScope, batch_id: str, *, now_ms: int) -> None:
    deleted = int(await scope.run(scripts.delete_batch, batch_id, now_ms))
    if deleted == 0:
        raise NotFound(f"batch {batch_id!r} not found")
    if deleted < 0:
        raise FailedPrecondition(f"batch {batch_id!r} is not finished: cancel it first")


async def prune_batches(
    scripts: Scripts, scope: BatchScope, batch_ids: Sequence[str], index: str | None = None
) -> int:
    """Drops the given batches from `index` (default: every batch's) if their meta is
    gone."""
    if not batch_ids:
        return 0
    keys = scope.keys
    return int(
        await scripts.prune_batches(
            keys=[index or keys.batches, *(keys.meta(batch_id) for batch_id in batch_ids)],
            args=list(batch_ids),
        )
    )
