"""One attempt of one item, and the outcome it leads to.

    the handler returns a JSON object          SUCCEEDED
    RetryableError, or item_timeout overrun    PENDING with retry_at (attempts left), or
                                               FAILED with that error (none left)
    PermanentError, any other HandlerError     FAILED now
    any other exception                        FAILED, UNKNOWN (traceback to the log only)
    output not a JSON object                   FAILED, INTERNAL

`run_block` runs a block of items in one `run_many` call: each item's outcome is decided
as above from what `run_many` returned for it, or, when the call raised (or overran
item_timeout), from that exception for every item of the block.

Attempts count across workers and runs: the claim says how many an item already had
(`ClaimedChunk.attempts`), so a retry on another worker, or after a crash, continues the
count. Nothing here sleeps: a retry is a PENDING outcome the store turns into a deferred
job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from batchd.core import fastjson
from batchd.core.domain import ClaimedChunk, ItemOutcome, ItemState
from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    RetryableError,
    SlowDown,
)
from batchd.worker.retry import retry_delay

__all__ = ["Item", "OnBlockSlowDown", "OnSlowDown", "run_block", "run_item"]

Item = tuple[int, str, bytes]  # (global index, custom_id, params_json)
# Told when a handler raised SlowDown, with the attempt's start (time.time()).
OnSlowDown = Callable[[SlowDown, float], Awaitable[None]]
# The same for a block: told the position in the block of the item that met it.
OnBlockSlowDown = Callable[[int, SlowDown, float], Awaitable[None]]


async def run_item(
    handler: Handler | None,
    claimed: ClaimedChunk,
    item: Item,
    log: structlog.typing.FilteringBoundLogger,
    *,
    on_slow_down: OnSlowDown | None = None,
) -> ItemOutcome:
    """Runs the next attempt of `item`; never raises but CancelledError from outside.
    `on_slow_down` hears of a SlowDown first (flow control's adaptive back-off)."""
    index, custom_id, params_json = item
    before = claimed.attempts.get(index, 0)
    if handler is None:
        message = f"no worker serves handler {claimed.handler!r}"
        return _failed(index, before, None, Code.UNIMPLEMENTED, message)
    try:
        params = {} if params_json == b"{}" else fastjson.loads(params_json)
    except ValueError:
        return _failed(index, before, None, Code.INVALID_ARGUMENT, "params are not JSON")
    attempt = before + 1
    start = time.time()
    # The item's logger is bound only if something logs (most items log nothing).
    ctx = ItemContext(claimed.batch_id, custom_id, attempt, log)
    limit = claimed.options.item_timeout
    try:
        if limit > 0:
            output = await _attempt(handler, limit, params, ctx)
        else:  # no deadline: one coroutine less per item
            output = await handler.run(params, ctx)
    except RetryableError as exc:
        if isinstance(exc, SlowDown) and on_slow_down is not None:
            await on_slow_down(exc, start)
        return _retry_or_fail(claimed, index, attempt, start, exc, ctx.logger)
    except HandlerError as exc:
        return _failed(index, attempt, start, exc.code, exc.message)
    except Exception as exc:
        ctx.logger.warning("item_raised", attempt=attempt, exc_info=True)
        return _failed(index, attempt, start, Code.UNKNOWN, _message(exc))
    except asyncio.CancelledError:
        if _being_cancelled():
            raise  # the job is: the item stays without outcome, for the next run
        # A CancelledError of the handler's own (say, from a task it awaited).
        ctx.logger.warning("item_cancelled_itself", attempt=attempt, exc_info=True)
        return _failed(index, attempt, start, Code.CANCELLED, "the handler was cancelled")
    return _succeeded(index, attempt, start, output, ctx)


async def _attempt(
    handler: Handler, limit: float, params: Any, ctx: ItemContext
) -> Mapping[str, Any]:
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await handler.run(params, ctx)
    except TimeoutError as exc:
        if deadline.expired():
            message = f"item timed out after {limit:g}s"
            raise RetryableError(message, code=Code.DEADLINE_EXCEEDED) from exc
        raise


async def run_block(
    handler: Handler,
    claimed: ClaimedChunk,
    items: Sequence[Item],
    log: structlog.typing.FilteringBoundLogger,
    *,
    on_slow_down: OnBlockSlowDown | None = None,
) -> list[ItemOutcome]:
    """Runs the next attempt of each of `items` in one `handler.run_many` call; one
    outcome per item, in order. Never raises but CancelledError from outside."""
    assert handler.run_many is not None
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    calls: list[tuple[dict[str, Any], ItemContext]] = []
    positions: list[int] = []  # where each call's item sits in `items`
    for position, (index, custom_id, params_json) in enumerate(items):
        before = claimed.attempts.get(index, 0)
        try:
            params = {} if params_json == b"{}" else fastjson.loads(params_json)
        except ValueError:
            message = "params are not JSON"
            outcomes[position] = _failed(index, before, None, Code.INVALID_ARGUMENT, message)
            continue
        calls.append((params, ItemContext(claimed.batch_id, custom_id, before + 1, log)))
        positions.append(position)
    if calls:
        start = time.time()
        results = await _block_results(handler, claimed, calls, log)
        for position, (_, ctx), result in zip(positions, calls, results, strict=True):
            index = items[position][0]
            if isinstance(result, BaseException):
                if isinstance(result, SlowDown) and on_slow_down is not None:
                    await on_slow_down(position, result, start)
                outcomes[position] = _outcome_of(claimed, index, ctx, start, result)
            else:
                outcomes[position] = _succeeded(index, ctx.attempt, start, result, ctx)
    return [outcome for outcome in outcomes if outcome is not None]


async def _block_results(
    handler: Handler,
    claimed: ClaimedChunk,
    calls: list[tuple[dict[str, Any], ItemContext]],
    log: structlog.typing.FilteringBoundLogger,
) -> Sequence[Any]:
    """What `run_many` returned, one per call; what it raised, repeated for each."""
    assert handler.run_many is not None
    limit = claimed.options.item_timeout
    try:
        if limit > 0:
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    results = await handler.run_many(calls)
            except TimeoutError as exc:
                if deadline.expired():
                    message = f"block of {len(calls)} items timed out after {limit:g}s"
                    raise RetryableError(message, code=Code.DEADLINE_EXCEEDED) from exc
                raise
        else:
            results = await handler.run_many(calls)
    except HandlerError as exc:
        return [exc] * len(calls)
    except Exception as exc:
        log.warning("block_raised", items=len(calls), exc_info=True)
        return [exc] * len(calls)
    except asyncio.CancelledError:
        if _being_cancelled():
            raise  # the job is: the items stay without outcome, for the next run
        log.warning("block_cancelled_itself", items=len(calls), exc_info=True)
        return [HandlerError("the handler was cancelled", code=Code.CANCELLED)] * len(calls)
    if not isinstance(results, (list, tuple)) or len(results) != len(calls):
        got = f"{len(results)} outcomes" if isinstance(results, (list, tuple)) else "a "
        got += "" if isinstance(results, (list, tuple)) else type(results).__name__
        message = f"run_many returned {got} for {len(calls)} items"
        return [HandlerError(message, code=Code.INTERNAL)] * len(calls)
    return results


def _outcome_of(
    claimed: ClaimedChunk, index: int, ctx: ItemContext, start: float, exc: BaseException
) -> ItemOutcome:
    """The outcome of an item whose attempt ended in `exc` (as `run_item` decides it)."""
    if isinstance(exc, RetryableError):
        return _retry_or_fail(claimed, index, ctx.attempt, start, exc, ctx.logger)
    if isinstance(exc, HandlerError):
        return _failed(index, ctx.attempt, start, exc.code, exc.message)
    return _failed(index, ctx.attempt, start, Code.UNKNOWN, _message(exc))


def _retry_or_fail(
    claimed: ClaimedChunk,
    index: int,
    attempt: int,
    start: float,
    exc: RetryableError,
    item_log: structlog.typing.FilteringBoundLogger,
) -> ItemOutcome:
    delay = retry_delay(claimed.options.retry_policy, attempt, exc.retry_after)
    if delay is None:
        return _failed(index, attempt, start, exc.code, exc.message)
    end = time.time()
    item_log.debug("item_retry_scheduled", attempt=attempt, code=exc.code, delay=round(delay, 3))
    return ItemOutcome(
        index=index,
        state=ItemState.PENDING,
        attempts=attempt,
        start_time=start,
        end_time=end,
        error_code=exc.code,
        error_message=exc.message,
        retry_at=end + delay,
    )


def _succeeded(
    index: int, attempt: int, start: float, output: Any, ctx: ItemContext
) -> ItemOutcome:
    if type(output) is not dict and not isinstance(output, Mapping):
        message = f"handler returned {type(output).__name__}, not a JSON object"
        return _failed(index, attempt, start, Code.INTERNAL, message)
    try:
        encoded = fastjson.dumps(output) if output else b"{}"
    except (TypeError, ValueError) as exc:
        ctx.logger.warning("item_output_invalid", error=str(exc))
        return _failed(index, attempt, start, Code.INTERNAL, f"handler output is not JSON: {exc}")
    # Positional: the per-item path, where keyword arguments cost more to build.
    return ItemOutcome(index, ItemState.SUCCEEDED, attempt, start, time.time(), encoded)


def _failed(index: int, attempts: int, start: float | None, code: int, message: str) -> ItemOutcome:
    return ItemOutcome(
        index=index,
        state=ItemState.FAILED,
        attempts=attempts,
        start_time=start,
        end_time=time.time(),
        error_code=int(code),
        error_message=message,
    )


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _message(exc: BaseException) -> str:
    """An exception as a short message for the caller: no traceback."""
    text = str(exc).strip()
    return text if text else type(exc).__name__
