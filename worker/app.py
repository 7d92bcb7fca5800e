"""The ARQ worker, assembled from batchd's Settings.

`build_worker` returns an `arq.Worker` for in-process use (tests, embedding);
`batchd-worker` (`batchd.worker.main`) runs the same worker with signal handling.

What ARQ does for us (arq 0.28, `arq/worker.py`):
- `Worker.main` puts its Redis pool in `ctx["redis"]`, then awaits `on_startup(ctx)`;
  every job gets a copy of ctx plus `job_id`, `job_try`, `enqueue_time`, `score`.
- `on_shutdown` runs only in `Worker.close()`: after `async_run()` call `close()`.
- A job running while its worker stops is cancelled, and a CancelledError job, like
  `Retry`, is put back on the queue (`retry_jobs`). A job that raises anything else, or
  times out, is finished and dropped: `run_chunk` turns Redis errors into `Retry`.
- With `job_completion_wait`, SIGINT/SIGTERM stop picking jobs and wait that long for the
  jobs in hand before cancelling them (`handle_sig_wait_for_completion`). We also tell
  the chunks in hand to start no more items and to hand the rest back.
- Nothing survives a Redis outage: `ResilientWorker` (batchd.worker.resilient) mends that,
  and the pool's client retries a command whose connection breaks in flight.

Besides ARQ's poll loop, each worker process runs three background tasks: the catalog
heartbeat, the lease renewer (`LeaseKeeper`: every chunk it holds, every lease_ttl / 3)
and the maintenance sweep (expired leases and completion windows).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import secrets
import signal
import socket
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import arq
from arq.connections import RedisSettings

from batchd.core import jobs
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.core.logs import get_logger
from batchd.core.maintenance import maintenance_loop
from batchd.core.store import BatchStore
from batchd.worker.background import BackgroundTasks
from batchd.worker.chunk_runner import CTX_KEY, WorkerRuntime, run_chunk
from batchd.worker.handler import Handler, WorkerInfo
from batchd.worker.leases import LeaseKeeper
from batchd.worker.outages import REDIS_UNAVAILABLE, RETRY_ON, Outage, client_retry
from batchd.worker.registry import load_handlers, specs
from batchd.worker.resilient import ResilientWorker
from batchd.worker.slots import SlotPool

__all__ = [
    "JOB_MAX_TRIES",
    "JOB_TIMEOUT",
    "SHUTDOWN_GRACE",
    "BatchdWorker",
    "build_worker",
    "new_worker_id",
    "worker_settings",
]

log = get_logger(__name__)

# A chunk job's time limit. Long, because a job that times out is dropped with its chunk
# still claimed (its lease then expires and the chunk is taken over). A crashed worker's
# chunk does not wait for it: its lease expires within lease_ttl.
JOB_TIMEOUT = 3600
# Runs of one chunk job: stops, Redis errors and missing handlers each use one.
JOB_MAX_TRIES = 10
# On SIGTERM/SIGINT, how long the jobs in hand may run before they are cancelled (and
# requeued). Under batchd-service's 30 s wait before it kills the worker.
SHUTDOWN_GRACE = 20


def new_worker_id() -> str:
    """hostname-pid-random: unique per process, readable in ListHandlers and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def worker_settings(
    settings: Settings,
    *,
    handlers: Mapping[str, Handler] | None = None,
    worker_id: str | None = None,
) -> dict[str, Any]:
    """ARQ worker settings (a `WorkerSettingsType` dict, for `arq.worker.create_worker`).

    `handlers` default to `load_handlers(settings.handlers)`.
    """
    served = load_handlers(settings.handlers) if handlers is None else handlers
    return _arq_options(settings, _Lifecycle(settings, served, worker_id or new_worker_id()))


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    handle_signals: bool = False,
    extra_handlers: Iterable[Handler] = (),
    handlers: Mapping[str, Handler] | None = None,
    poll_delay: float | None = None,
) -> BatchdWorker:
    """An ARQ worker serving the built-in, installed and configured handlers (plus
    `extra_handlers`). Build it inside the event loop that will run it.

    Run it with `await worker.async_run()` and always `await worker.close()` after (that
    runs the shutdown hooks); `worker.started` is set once it has published its handlers.
    `handlers`, if given, are served instead of any loaded (nothing installed joins them:
    a test serves exactly what it names). `burst=True` stops once the queue is empty.
    `poll_delay` defaults to
    settings.worker_poll_interval. Leave `handle_signals` off inside another
    application: it replaces SIGINT/SIGTERM handlers.
    """
    if handlers is None:
        handlers = load_handlers(settings.handlers, extra_handlers)
    lifecycle = _Lifecycle(settings, handlers, new_worker_id())
    options = _arq_options(settings, lifecycle)
    return BatchdWorker(
        lifecycle,
        burst=burst,
        handle_signals=handle_signals,
        poll_delay=settings.worker_poll_interval if poll_delay is None else poll_delay,
        **options,
    )


def _arq_options(settings: Settings, lifecycle: _Lifecycle) -> dict[str, Any]:
    if not settings.redis_url:
        raise ValueError("the worker needs a Redis URL (BATCHD_REDIS_URL)")
    return {
        "functions": [
            arq.func(run_chunk, name=jobs.RUN_CHUNK, timeout=JOB_TIMEOUT, max_tries=JOB_MAX_TRIES)
        ],
        "queue_name": Keys(settings.key_prefix).queue,
        "redis_settings": redis_settings(settings.redis_url),
        "job_serializer": jobs.serialize,
        "job_deserializer": jobs.deserialize,
        "max_jobs": settings.chunk_jobs,
        "keep_result": 0,  # nobody reads ARQ results: outcomes live in the store
        "max_tries": JOB_MAX_TRIES,
        "job_completion_wait": SHUTDOWN_GRACE,
        "on_startup": lifecycle.startup,
        "on_shutdown": lifecycle.shutdown,
    }


def redis_settings(url: str) -> RedisSettings:
    """ARQ's connection settings for `url`, retrying a command whose connection breaks."""
    return replace(RedisSettings.from_dsn(url), retry=client_retry(), retry_on_error=RETRY_ON)


class BatchdWorker(ResilientWorker):
    """arq's Worker, plus `worker_id` and `started` (set once the catalog is published)."""

    def __init__(self, lifecycle: _Lifecycle, **options: Any) -> None:
        super().__init__(**options)
        self.worker_id = lifecycle.worker_id
        self.started = lifecycle.started
        self._draining = lifecycle.draining

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT: arq stops taking jobs and waits up to SHUTDOWN_GRACE for those
        in hand; the chunks among them also start no more items and go back to the queue
        with the rest (they would otherwise run whole chunks before stopping)."""
        self._draining.set()
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        """arq 0.28's `Worker.close`, step for step, but closing the pool with `aclose()`
        (its `close(close_connection_pool=True)` is deprecated in redis-py 5), and not
        failing on a job task that ended cancelled."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)  # cancels what still runs, as arq does
        if self._pool is None:
            return
        # Those tasks were just cancelled: one cut short in arq's own bookkeeping ends
        # with CancelledError, which must not stop the close (its job runs again).
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.stop_clearing()
        await self._delete_health_check()
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose()
        self._pool = None


class _Lifecycle:
    """ARQ's on_startup/on_shutdown: the runtime, handler hooks, catalog and heartbeat."""

    def __init__(self, settings: Settings, handlers: Mapping[str, Handler], worker_id: str):
        self.settings = settings
        self.handlers = handlers
        self.worker_id = worker_id
        self.opened: list[Handler] = []  # handlers whose startup hook ran
        self.background = BackgroundTasks()  # heartbeat, lease renewer, maintenance
        self.store: BatchStore | None = None
        self.started = asyncio.Event()
        self.draining = asyncio.Event()

    async def startup(self, ctx: dict[Any, Any]) -> None:
        settings = self.settings
        # ARQ's pool (bytes replies, no decoding) serves the store too: one pool per process.
        # The store finishes batches when their last outcome is recorded: it needs retention.
        self.store = BatchStore(
            ctx["redis"], Keys(settings.key_prefix), retention=settings.retention
        )
        info = WorkerInfo(
            worker_id=self.worker_id, concurrency=settings.worker_concurrency, settings=settings
        )
        try:
            for handler in self.handlers.values():
                if handler.startup is not None:
                    await handler.startup(info)
                self.opened.append(handler)
        except BaseException:
            await self._shutdown_handlers()
            raise
        leases = LeaseKeeper(self.store, settings.lease_ttl)
        ctx[CTX_KEY] = WorkerRuntime(
            settings=settings,
            store=self.store,
            handlers=self.handlers,
            worker_id=self.worker_id,
            slots=SlotPool(max(settings.worker_concurrency, 1)),
            max_tries=JOB_MAX_TRIES,
            draining=self.draining,
            leases=leases,
        )
        await self._publish()
        self.background.spawn(self._beat(), "batchd heartbeat")
        self.background.spawn(leases.run(), "batchd lease renewer")
        self.background.spawn(self._maintain(), "batchd maintenance")
        self.started.set()
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            handlers=sorted(self.handlers),
            concurrency=settings.worker_concurrency,
            max_chunks=settings.chunk_jobs,
            gc_threshold=gc.get_threshold()[0],
        )

    async def shutdown(self, ctx: dict[Any, Any]) -> None:
        self.started.clear()
        # After the jobs: a chunk in flight needs its lease renewed to the end.
        await self.background.cancel_all()
        runtime: WorkerRuntime | None = ctx.get(CTX_KEY)
        if runtime is not None:
            await runtime.permits.close()
        if self.store is not None:
            try:
                await self.store.remove_worker(self.worker_id)
            except Exception:
                log.warning("worker_remove_failed", worker_id=self.worker_id, exc_info=True)
        await self._shutdown_handlers()
        log.info("worker_stopped", worker_id=self.worker_id)

    async def _publish(self) -> None:
        assert self.store is not None
        await self.store.publish_worker(
            self.worker_id, specs(self.handlers), ttl=self.settings.worker_ttl
        )

    async def _maintain(self) -> None:
        """The maintenance sweeps (batchd.core.maintenance), every worker's share of them;
        the first at a random point of the interval, so that workers started together do
        not sweep together."""
        assert self.store is not None
        interval = self.settings.maintenance_interval
        await asyncio.sleep(random.uniform(0, interval))
        await maintenance_loop(self.store, interval)

    async def _beat(self) -> None:
        """Refreshes the catalog and this worker's liveness; a failed beat is only logged."""
        outage = Outage(log, "heartbeat")
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self._publish()
            except REDIS_UNAVAILABLE as exc:
                outage.failed(exc, worker_id=self.worker_id)
            except Exception:
                log.warning("worker_heartbeat_failed", worker_id=self.worker_id, exc_info=True)
            else:
                outage.recovered(worker_id=self.worker_id)

    async def _shutdown_handlers(self) -> None:
        while self.opened:
            handler = self.opened.pop()
            if handler.shutdown is None:
                continue
            try:
                await handler.shutdown()
            except Exception:
                log.warning("handler_shutdown_failed", handler=handler.name, exc_info=True)
