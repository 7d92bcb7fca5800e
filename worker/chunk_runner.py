"""`run_chunk`: the ARQ job that runs one chunk of a batch.

The job claims the chunk, runs its remaining items through a fixed pool of consumer
coroutines fed by a queue (never one task per item: a 10,000-item chunk costs as many
tasks as its pool), and records outcomes in blocks: every `outcome_flush_items` items or
`outcome_flush_interval` seconds from a background flusher, and once more at the end,
releasing the chunk. A worker-wide semaphore bounds the items in flight across all the
chunk jobs of the process.

A flush answers with the batch's state: once it says CANCELLING (or CANCELLED) no new
item starts, and the final flush records every item not started as CANCELLED. Items in
flight finish.

When the worker drains (SIGTERM), no new item starts either; the outcomes so far are
recorded and the job goes back to the queue for the items not started.

Nothing a handler does can crash the worker: every exception becomes a FAILED item.
When Redis fails, or the worker stops mid-chunk, the job is retried by ARQ; recording is
first-writer-wins and a re-claimed chunk hands out only the items without an outcome, so
the outcomes flushed so far are kept and none is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from arq import Retry

from batchd.core.config import Settings
from batchd.core.domain import BatchState, ClaimedChunk, ItemOutcome, ItemState
from batchd.core.errors import NotFound
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.worker.handler import Code, Handler, HandlerError, ItemContext, RetryableError
from batchd.worker.retry import inline_delay

__all__ = ["CTX_KEY", "WorkerRuntime", "run_chunk"]

log = get_logger(__name__)

# Where the worker's runtime sits in ARQ's per-worker ctx dict.
CTX_KEY: Final = "batchd"
# A chunk whose handler this worker lacks goes back to the queue, unclaimed, for this
# long (another worker may serve it: during a rolling deploy, say); on the job's last
# try its items fail UNIMPLEMENTED instead, so that the batch ends.
MISSING_HANDLER_DEFER = 5.0
# After a Redis error the job is run again this long later (the chunk stays claimed).
STORE_ERROR_DEFER = 2.0

_Item = tuple[int, str, bytes]  # (global index, custom_id, params_json)


@dataclass
class WorkerRuntime:
    """What every chunk job of a worker process shares; built by the startup hook."""

    settings: Settings
    store: BatchStore
    handlers: Mapping[str, Handler]
    worker_id: str
    # Items in flight across every chunk job of the process.
    slots: asyncio.Semaphore
    max_tries: int  # the ARQ job's tries: the last one fails items rather than retrying
    # Set when the worker is asked to stop: chunks start no more items and go back to
    # the queue, for another worker, with what they have not started.
    draining: asyncio.Event


async def run_chunk(ctx: dict[Any, Any], batch_id: str, chunk: int) -> None:
    """ARQ job: run what is left of chunk `chunk` of batch `batch_id`."""
    runtime: WorkerRuntime = ctx[CTX_KEY]
    last_try = int(ctx.get("job_try", 1)) >= runtime.max_tries
    store = runtime.store
    try:
        # Look before claiming: a claim marks the batch RUNNING, and a batch whose handler
        # no worker serves stays QUEUED (unless this is the job's last try).
        batch = await store.get_batch(batch_id)
        if batch.handler not in runtime.handlers and not last_try:
            log.warning(
                "chunk_handler_missing", batch_id=batch_id, chunk=chunk, handler=batch.handler
            )
            raise Retry(defer=MISSING_HANDLER_DEFER)
        claimed = await store.claim_chunk(batch_id, chunk)
    except NotFound:
        claimed = None
    except Retry:
        raise
    except Exception as exc:
        log.warning("chunk_claim_failed", batch_id=batch_id, chunk=chunk, exc_info=True)
        raise Retry(defer=STORE_ERROR_DEFER) from exc
    if claimed is None:
        log.debug("chunk_skipped", batch_id=batch_id, chunk=chunk)
        return
    handler = runtime.handlers.get(claimed.handler)
    try:
        finished = await _ChunkRun(runtime, claimed, handler).run()
    except _FlushFailed as exc:
        raise Retry(defer=STORE_ERROR_DEFER) from exc
    if not finished:
        raise Retry()  # back to the queue as it is: the chunk stays claimed, the rest runs


class _FlushFailed(Exception):
    """The final flush could not reach Redis: the job must run again."""


class _ChunkRun:
    """One run of one chunk job."""

    def __init__(self, runtime: WorkerRuntime, claimed: ClaimedChunk, handler: Handler | None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.claimed = claimed
        self.handler = handler
        self.log = log.bind(batch_id=claimed.batch_id, chunk=claimed.chunk)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.buffer: list[ItemOutcome] = []
        self.flush_now = asyncio.Event()
        self.stopping = False
        self.cancelled = False  # the batch is being cancelled: start no more items
        self.counts: Counter[ItemState] = Counter()

    async def run(self) -> bool:
        """Runs the chunk; False when the worker began draining before its end."""
        claimed, started = self.claimed, time.monotonic()
        for item in claimed.items:
            self.queue.put_nowait(item)
        pool = min(len(claimed.items), max(self.settings.worker_concurrency, 1))
        self.log.info(
            "chunk_started", handler=claimed.handler, items=len(claimed.items), consumers=pool
        )
        flusher = asyncio.create_task(
            self._flusher(), name=f"flush {claimed.batch_id}:{claimed.chunk}"
        )
        try:
            async with asyncio.TaskGroup() as consumers:
                for n in range(pool):
                    consumers.create_task(self._consume(), name=f"consumer {n}")
        except BaseException:
            # Cancelled (the worker is stopping) or broken: keep what is done; the job's
            # next run, if any, does the rest.
            try:
                await asyncio.shield(self._stop(flusher, release=False))
            except _FlushFailed:
                self.log.warning("outcome_flush_failed", exc_info=True)
            self.log.info("chunk_interrupted", **self._count_fields())
            raise
        not_started = self._drain()
        if not_started and not self.cancelled:
            # The worker is draining: record what is done, leave the rest to another run
            # (unless that last flush tells of a cancel: then end the chunk here).
            await self._stop(flusher, release=False)
            if not self.cancelled:
                self.log.info(
                    "chunk_handed_back",
                    not_started=len(not_started),
                    duration=round(time.monotonic() - started, 3),
                    **self._count_fields(),
                )
                return False
        self.buffer.extend(self._cancelled(item) for item in not_started)
        self.counts[ItemState.CANCELLED] += len(not_started)
        state = await self._stop(flusher, release=True)
        self.log.info(
            "chunk_done",
            state=state.name if state is not None else None,
            duration=round(time.monotonic() - started, 3),
            **self._count_fields(),
        )
        return True

    # -- consumers -------------------------------------------------------------------
    async def _consume(self) -> None:
        slots, draining = self.runtime.slots, self.runtime.draining
        while not (self.cancelled or draining.is_set()):
            async with slots:
                if self.cancelled or draining.is_set() or self.queue.empty():
                    return
                item = self.queue.get_nowait()
                outcome = await self._run_item(*item)
            self.counts[outcome.state] += 1
            self.buffer.append(outcome)
            if len(self.buffer) >= self.settings.outcome_flush_items:
                self.flush_now.set()
            # A handler that never awaits would otherwise starve flushes and heartbeats.
            await asyncio.sleep(0)

    async def _run_item(self, index: int, custom_id: str, params_json: bytes) -> ItemOutcome:
        item_log = self.log.bind(custom_id=custom_id)
        if self.handler is None:
            message = f"no worker serves handler {self.claimed.handler!r}"
            return self._failed(index, 0, None, Code.UNIMPLEMENTED, message)
        try:
            params = json.loads(params_json)
        except ValueError:
            return self._failed(index, 0, None, Code.INVALID_ARGUMENT, "params are not JSON")
        policy = self.claimed.options.retry_policy
        attempt = 0
        while True:
            attempt += 1
            start = time.time()
            ctx = ItemContext(
                batch_id=self.claimed.batch_id,
                custom_id=custom_id,
                attempt=attempt,
                logger=item_log,
            )
            try:
                output = await self._attempt(params, ctx)
            except RetryableError as exc:
                # INTERIM: in-process retry, short delays only (see batchd.worker.retry).
                delay = inline_delay(policy, attempt, exc.retry_after)
                if delay is None:
                    return self._failed(index, attempt, start, exc.code, exc.message)
                item_log.debug("item_retrying", attempt=attempt, code=exc.code, delay=delay)
                await asyncio.sleep(delay)
                continue
            except HandlerError as exc:
                return self._failed(index, attempt, start, exc.code, exc.message)
            except Exception as exc:
                item_log.warning("item_raised", attempt=attempt, exc_info=True)
                return self._failed(index, attempt, start, Code.UNKNOWN, _message(exc))
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # the job is: the item stays without outcome, for the next run
                # A CancelledError of the handler's own (say, from a task it awaited).
                item_log.warning("item_cancelled_itself", attempt=attempt, exc_info=True)
                message = "the handler was cancelled"
                return self._failed(index, attempt, start, Code.CANCELLED, message)
            return self._succeeded(index, attempt, start, output, item_log)

    async def _attempt(self, params: Any, ctx: ItemContext) -> Mapping[str, Any]:
        assert self.handler is not None
        limit = self.claimed.options.item_timeout
        deadline = asyncio.timeout(limit if limit > 0 else None)
        try:
            async with deadline:
                return await self.handler.run(params, ctx)
        except TimeoutError as exc:
            if deadline.expired():
                message = f"item timed out after {limit:g}s"
                raise RetryableError(message, code=Code.DEADLINE_EXCEEDED) from exc
            raise

    def _succeeded(
        self,
        index: int,
        attempt: int,
        start: float,
        output: Any,
        item_log: structlog.typing.FilteringBoundLogger,
    ) -> ItemOutcome:
        if not isinstance(output, Mapping):
            message = f"handler returned {type(output).__name__}, not a JSON object"
            return self._failed(index, attempt, start, Code.INTERNAL, message)
        try:
            encoded = json.dumps(
                output, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            item_log.warning("item_output_invalid", error=str(exc))
            message = f"handler output is not JSON: {exc}"
            return self._failed(index, attempt, start, Code.INTERNAL, message)
        return ItemOutcome(
            index=index,
            state=ItemState.SUCCEEDED,
            attempts=attempt,
            start_time=start,
            end_time=time.time(),
            output_json=encoded,
        )

    @staticmethod
    def _failed(
        index: int, attempt: int, start: float | None, code: int, message: str
    ) -> ItemOutcome:
        return ItemOutcome(
            index=index,
            state=ItemState.FAILED,
            attempts=attempt,
            start_time=start,
            end_time=time.time(),
            error_code=int(code),
            error_message=message,
        )

    @staticmethod
    def _cancelled(item: _Item) -> ItemOutcome:
        return ItemOutcome(
            index=item[0], state=ItemState.CANCELLED, attempts=0, start_time=None, end_time=None
        )

    def _drain(self) -> list[_Item]:
        left: list[_Item] = []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        return left

    def _count_fields(self) -> dict[str, int]:
        return {
            "succeeded": self.counts[ItemState.SUCCEEDED],
            "failed": self.counts[ItemState.FAILED],
            "cancelled": self.counts[ItemState.CANCELLED],
        }

    # -- flushing --------------------------------------------------------------------
    async def _flusher(self) -> None:
        """Flushes every `outcome_flush_interval` seconds, or when told to; never raises."""
        interval = max(self.settings.outcome_flush_interval, 0.001)
        while not self.stopping:
            try:
                async with asyncio.timeout(interval):
                    await self.flush_now.wait()
            except TimeoutError:
                pass
            self.flush_now.clear()
            if self.buffer and not self.stopping:
                try:
                    await self._flush(release=False)
                except _FlushFailed:
                    self.log.warning("outcome_flush_failed", exc_info=True)

    async def _stop(self, flusher: asyncio.Task[None], *, release: bool) -> BatchState | None:
        """Stops the flusher (after its flush in progress, if any), then flushes the rest."""
        self.stopping = True
        self.flush_now.set()
        await flusher
        if self.buffer or release:
            return await self._flush(release=release)
        return None

    async def _flush(self, *, release: bool) -> BatchState:
        outcomes, self.buffer = self.buffer, []
        try:
            state = await self.runtime.store.record_outcomes(
                self.claimed.batch_id, self.claimed.chunk, outcomes, release=release
            )
        except Exception as exc:
            self.buffer[:0] = outcomes  # kept for the next flush
            raise _FlushFailed(str(exc)) from exc
        if state in (BatchState.CANCELLING, BatchState.CANCELLED):
            self.cancelled = True
        return state


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _message(exc: BaseException) -> str:
    """An exception as a short message for the caller: no traceback."""
    text = str(exc).strip()
    return text if text else type(exc).__name__
