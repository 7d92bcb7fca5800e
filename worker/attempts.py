"""One attempt of one item, and the outcome it leads to.

    the handler returns a JSON object          SUCCEEDED
    RetryableError, or item_timeout overrun    PENDING with retry_at (attempts left), or
                                               FAILED with that error (none left)
    PermanentError, any other HandlerError     FAILED now
    any other exception                        FAILED, UNKNOWN (traceback to the log only)
    output not a JSON object                   FAILED, INTERNAL

Attempts count across workers and runs: the claim says how many an item already had
(`ClaimedChunk.attempts`), so a retry on another worker, or after a crash, continues the
count. Nothing here sleeps: a retry is a PENDING outcome the store turns into a deferred
job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
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

__all__ = ["Item", "OnSlowDown", "run_item"]

Item = tuple[int, str, bytes]  # (global index, custom_id, params_json)
# Told when a handler raised SlowDown, with the attempt's start (time.time()).
OnSlowDown = Callable[[SlowDown, float], Awaitable[None]]


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
