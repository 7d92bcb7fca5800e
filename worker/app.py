"""The ARQ worker, assembled from batchd's Settings.

`build_worker` returns an `arq.Worker` for in-process use (tests, embedding);
`batchd-worker` (`batchd.worker.main`) runs the same worker with signal handling.

The ARQ side — the queues of the served handlers, outages, drain and close — is
`batchd.worker.arq_worker`; this module builds the worker's runtime around it.

Besides ARQ's poll loop, each worker process runs four background tasks: the catalog
heartbeat, the lease renewer (`LeaseKeeper`: every chunk it holds, every lease_ttl / 3),
the maintenance sweep (`batchd.core.maintenance`: expired leases, closed completion
windows, jobs left in the single queue of earlier versions) and the delivery of
completion callbacks (`batchd.worker.callback_delivery`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from batchd.core.background import BackgroundTasks
from batchd.core.callbacks import CallbackOutbox, CallbackSecrets
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.core.logs import get_logger
from batchd.core.maintenance import maintenance_loop
from batchd.core.metrics import Listener
from batchd.core.store import BatchStore
from batchd.worker.arq_worker import BatchdWorker
from batchd.worker.callback_delivery import CallbackDelivery
from batchd.worker.chunk_runner import CTX_KEY, WorkerRuntime, run_chunk
from batchd.worker.fifo_semaphore import FifoSemaphore
from batchd.worker.flow_gate import PermitPool
from batchd.worker.handler import Handler, WorkerInfo
from batchd.worker.health import WorkerHealth
from batchd.worker.leases import LeaseKeeper
from batchd.worker.metrics import WorkerMetrics, start_worker_listener
from batchd.worker.outages import REDIS_UNAVAILABLE, Outage
from batchd.worker.registry import load_handlers, specs

__all__ = [
    "BatchdWorker",
    "build_worker",
    "new_worker_id",
]

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)


def new_worker_id() -> str:
    """hostname-pid-random: unique per process, readable in ListHandlers and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    handle_signals: bool = False,
    extra_handlers: Iterable[Handler] = (),
    handlers: Mapping[str, Handler] | None = None,
    poll_delay: float | None = None,
    metrics_port: int | None = None,
    tracing: Tracing | None = None,
) -> BatchdWorker:
    """An ARQ worker serving the built-in, installed and configured handlers (plus
    `extra_handlers`). Build it inside the event loop that will run it.

    Run it with `await worker.async_run()` and always `await worker.close()` after (that
    runs the shutdown hooks); `worker.started` is set once it has published its handlers.
    `handlers`, if given, are served instead of any loaded (nothing installed joins them:
    a test serves exactly what it names). `burst=True` stops once the queue is empty.
    `poll_delay` defaults to
    settings.worker_poll_interval. Leave `handle_signals` off inside another
    application: it replaces SIGINT/SIGTERM handlers. `metrics_port` (a test's) overrides
    settings.worker_metrics_port: a port for /metrics, 0 for any free one; the bound port
    is `worker.metrics_port` once started. `tracing`: spans of the chunk runs and item
    attempts, in their batches' traces (batchd.core.tracing).
    """
    if handlers is None:
        handlers = load_handlers(settings.handlers, extra_handlers)
    if not handlers:
        raise ValueError("the worker serves no handler")
    port = settings.worker_metrics_port or None if metrics_port is None else metrics_port
    hooks = _WorkerHooks(settings, handlers, new_worker_id(), port, tracing)
    hooks.callback_secrets = CallbackSecrets.from_settings(settings)  # SettingError now
    if not settings.redis_url:
        raise ValueError("the worker needs a Redis URL (BATCHD_REDIS_URL)")
    keys = Keys(settings.key_prefix)
    worker = BatchdWorker(
        run_chunk,
        queues=[keys.queue(name) for name in sorted(handlers)],
        redis_url=settings.redis_url,
        redis_timeout=settings.redis_timeout,
        max_jobs=settings.chunk_jobs,
        on_startup=hooks.startup,
        on_shutdown=hooks.shutdown,
        worker_id=hooks.worker_id,
        started=hooks.started,
        draining=hooks.draining,
        burst=burst,
        handle_signals=handle_signals,
        poll_delay=settings.worker_poll_interval if poll_delay is None else poll_delay,
        wake_channel=keys.wake,
        lease_ttl=settings.lease_ttl,
    )
    hooks.worker = worker
    return worker


class _WorkerHooks:
    """ARQ's on_startup/on_shutdown: the runtime, handler hooks, catalog and heartbeat."""

    def __init__(
        self,
        settings: Settings,
        handlers: Mapping[str, Handler],
        worker_id: str,
        metrics_port: int | None,
        tracing: Tracing | None,
    ) -> None:
        self.settings = settings
        self.metrics_port = metrics_port  # None: no metrics
        self.metrics: WorkerMetrics | None = None
        self.listener: Listener | None = None
        self.worker: BatchdWorker | None = None
        self.tracing = tracing
        self.handlers = handlers
        self.worker_id = worker_id
        self.opened: list[Handler] = []  # handlers whose startup hook ran
        self.background = BackgroundTasks()  # heartbeat, lease renewer, maintenance, callbacks
        self.callback_secrets = CallbackSecrets()
        self.store: BatchStore | None = None
        self.started = asyncio.Event()
        self.draining = asyncio.Event()

    async def startup(self, ctx: dict[Any, Any]) -> None:
        settings = self.settings
        if self.metrics_port is not None:
            await self._serve_metrics(self.metrics_port)
        # ARQ's pool (bytes replies, no decoding) serves the store too: one pool per process.
        # The store finishes batches when their last outcome is recorded: it needs retention.
        self.store = BatchStore.from_settings(ctx["redis"], settings)
        info = WorkerInfo(
            worker_id=self.worker_id,
            concurrency=settings.worker_concurrency,
            settings=settings,
            tracing=self.tracing,
        )
        try:
            for handler in self.handlers.values():
                if handler.startup is not None:
                    await handler.startup(info)
                self.opened.append(handler)
        except BaseException:
            await self._shutdown_handlers()
            raise
        metrics = self.metrics
        leases = LeaseKeeper(self.store, settings.lease_ttl, metrics)
        ctx[CTX_KEY] = runtime = WorkerRuntime(
            settings=settings,
            store=self.store,
            handlers=self.handlers,
            worker_id=self.worker_id,
            in_flight=FifoSemaphore(max(settings.worker_concurrency, 1)),
            draining=self.draining,
            leases=leases,
            permits=PermitPool(metrics),
            metrics=metrics,
            tracing=self.tracing,
        )
        if metrics is not None:
            concurrency = runtime.in_flight.free
            worker = self.worker
            metrics.watch(
                lambda: concurrency - runtime.in_flight.free,
                lambda: worker.job_counter if worker is not None else 0,
            )
        await self._publish()
        self.background.spawn(self._beat(), "batchd heartbeat")
        self.background.spawn(leases.run(), "batchd lease renewer")
        self.background.spawn(self._maintain(), "batchd maintenance")
        outbox = CallbackOutbox(ctx["redis"], Keys(settings.key_prefix))
        delivery = CallbackDelivery(settings, outbox, self.callback_secrets, metrics)
        self.background.spawn(delivery.run(), "batchd callbacks")
        self.started.set()
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            handlers=sorted(self.handlers),
            concurrency=settings.worker_concurrency,
            max_chunks=settings.chunk_jobs,
            gc_threshold=gc.get_threshold()[0],
            tracing=self.tracing is not None,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
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
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        log.info("worker_stopped", worker_id=self.worker_id)

    async def _serve_metrics(self, port: int) -> None:
        """The worker's metrics, and their listener (SettingError if it cannot listen)."""
        settings = self.settings
        metrics = WorkerMetrics(sorted(self.handlers))
        metrics.concurrency.set(max(settings.worker_concurrency, 1))
        metrics.max_chunk_jobs.set(settings.chunk_jobs)
        health = None
        if self.worker is not None:
            worker = self.worker
            health = WorkerHealth(lambda: worker.last_pass, self.started, self.draining)
        self.listener = await start_worker_listener(metrics, settings.metrics_host, port, health)
        self.metrics = metrics
        if self.worker is not None:
            self.worker.metrics = metrics
            self.worker.metrics_port = self.listener.port
            self.worker.poll_outage.clock = metrics.outages
        log.info("worker_metrics_listening", host=settings.metrics_host, port=self.listener.port)

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
        await maintenance_loop(
            self.store, interval, self.metrics.maintenance if self.metrics else None
        )

    async def _beat(self) -> None:
        """Refreshes the catalog and this worker's liveness; a failed beat is only logged."""
        outage = Outage(log, "heartbeat", self.metrics.outages if self.metrics else None)
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
