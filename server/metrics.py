"""The server's Prometheus metrics: its gRPC calls (an interceptor), its uploads and
watches, and a census of Redis taken at scrape time (batchd.core.census).

The census is read by the /metrics handler before it renders (`ServerMetrics.refresh`),
on the event loop, at most once per `CENSUS_MAX_AGE` seconds however many scrapers ask;
the collector's `collect` only reads the last one. Names, types and labels:
docs/operations.md, "Metrics".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from batchd.core.census import Census
from batchd.core.logs import get_logger
from batchd.core.metrics import MaintenanceMetrics, OutageClock, new_registry
from batchd.core.store import BatchStore
from batchd.server.interception import Behaviour, Handler, WrappedHandlers, rewrap

__all__ = ["CENSUS_LIMIT", "CENSUS_MAX_AGE", "GrpcMetricsInterceptor", "ServerMetrics"]

log = get_logger(__name__)

# Seconds a census serves scrapes before the next scrape takes a new one.
CENSUS_MAX_AGE: Final = 5.0
# Open batches a census reads at most (one HMGET each).
CENSUS_LIMIT: Final = 10_000
# Upper bounds (seconds) of the call-latency buckets; streams (WatchProgress, uploads)
# last minutes.
CALL_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
)  # fmt: skip


class ServerMetrics:
    """Every metric of one server, in its own registry."""

    def __init__(
        self,
        store: BatchStore,
        *,
        worker_ttl: float,
        watchers_open: Callable[[], float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry = new_registry() if registry is None else registry
        self.calls = Counter(
            "batchd_grpc_server_handled",
            "gRPC calls this server ended, by service, method and status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "batchd_grpc_server_handling_seconds",
            "Seconds this server took over each gRPC call, to its status",
            ["service", "method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.batches_submitted = Counter(
            "batchd_server_batches_submitted",
            "Batches committed through this server (SubmitBatch, UploadBatch; not replays), "
            "by handler",
            ["handler"],
            registry=registry,
        )
        self.items_submitted = Counter(
            "batchd_server_items_submitted",
            "Items of the batches committed through this server, by handler",
            ["handler"],
            registry=registry,
        )
        self.bytes_submitted = Counter(
            "batchd_server_submitted_bytes",
            "Bytes of the batches committed through this server, as max_upload_bytes "
            "counts them (params, custom_ids and per-item overhead), by handler",
            ["handler"],
            registry=registry,
        )
        self.watchers = Gauge(
            "batchd_server_watchers_open",
            "WatchProgress and WatchBatches streams open on this server",
            registry=registry,
        )
        self.watchers.set_function(watchers_open)
        self.outages = OutageClock(registry)
        self.maintenance = MaintenanceMetrics(registry)
        self.census = _CensusCollector(store, worker_ttl, registry)

    def submitted(self, handler: str, items: int, size: int) -> None:
        self.batches_submitted.labels(handler).inc()
        self.items_submitted.labels(handler).inc(items)
        self.bytes_submitted.labels(handler).inc(size)

    async def refresh(self) -> None:
        """Takes a census if the last is older than CENSUS_MAX_AGE (before a scrape)."""
        await self.census.refresh()


class _CensusCollector(Collector):
    """The gauges read from Redis: the last census, refreshed by `refresh`."""

    def __init__(self, store: BatchStore, worker_ttl: float, registry: CollectorRegistry) -> None:
        self.store = store
        self.worker_ttl = worker_ttl
        self.census: Census | None = None
        self.taken_at = -CENSUS_MAX_AGE  # time.monotonic()
        self.failures = 0
        self._lock = asyncio.Lock()
        registry.register(self)

    async def refresh(self) -> None:
        async with self._lock:  # scrapes at once share one census
            if time.monotonic() - self.taken_at < CENSUS_MAX_AGE:
                return
            try:
                self.census = await self.store.census(
                    worker_ttl=self.worker_ttl, limit=CENSUS_LIMIT
                )
            except Exception as exc:  # the last census stays; the failure is counted
                self.failures += 1
                log.warning("metrics_census_failed", error=str(exc) or type(exc).__name__)
                return
            self.taken_at = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        failures = GaugeMetricFamily(
            "batchd_census_failures",
            "Censuses of Redis for these metrics that failed (Redis away): the gauges "
            "below then keep their last values",
            value=self.failures,
        )
        yield failures
        census = self.census
        if census is None:
            return
        age = GaugeMetricFamily(
            "batchd_census_age_seconds",
            "Seconds since the census of Redis these gauges come from was taken",
            value=time.monotonic() - self.taken_at,
        )
        yield age
        yield GaugeMetricFamily(
            "batchd_pending_items",
            "Items not yet finished across every batch (what max_pending_items holds)",
            value=census.pending_items,
        )
        yield GaugeMetricFamily(
            "batchd_batches_kept", "Batches kept in Redis, in any state", value=census.batches
        )
        yield GaugeMetricFamily(
            "batchd_batches_open", "Batches not yet finished", value=census.open_batches
        )
        yield GaugeMetricFamily(
            "batchd_chunks_claimed",
            "Chunks held by workers under a lease",
            value=census.claimed_chunks,
        )
        yield GaugeMetricFamily(
            "batchd_workers_live",
            "Workers that sent a heartbeat within worker_ttl",
            value=census.live_workers,
        )
        yield GaugeMetricFamily(
            "batchd_census_complete",
            f"1 if the census read every open batch, 0 if it read the {CENSUS_LIMIT} "
            "nearest their deadline (batchd_batches_by_state and "
            "batchd_pending_items_by_priority then cover those only)",
            value=1 if census.complete else 0,
        )
        by_state = {s.name.lower(): n for s, n in census.open_by_state.items()}
        yield _by_label(
            "batchd_batches_by_state",
            "Open batches by state (queued, running, paused, cancelling)",
            "state",
            ((s, by_state.get(s, 0)) for s in ("queued", "running", "paused", "cancelling")),
        )
        yield _by_label(
            "batchd_pending_items_by_priority",
            "Items not yet started or finished of the open batches, by batch priority",
            "priority",
            ((str(p), n) for p, n in sorted(census.pending_by_priority.items())),
        )
        yield _by_label(
            "batchd_chunk_jobs_queued",
            "Chunk jobs in a handler's queue (due or deferred), by handler",
            "handler",
            sorted(census.queued_jobs.items()),
        )
        yield _by_label(
            "batchd_handler_workers_live",
            "Live workers serving a handler, by handler",
            "handler",
            sorted(census.live_workers_by_handler.items()),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _by_label(
    name: str, documentation: str, label: str, values: Iterable[tuple[str, float]]
) -> GaugeMetricFamily:
    """A gauge family of one label, a sample per (label value, value)."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value, count in values:
        family.add_metric([value], count)
    return family


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by service, method and status code, and times it. Outermost, so
    that calls the cap or authentication refuse are counted too. A method no service
    has (UNIMPLEMENTED) counts as service and method "unknown": a caller cannot add
    labels."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self._wrapped = WrappedHandlers()
        self._unknown = metrics.calls.labels("unknown", "unknown", "UNIMPLEMENTED")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            self._unknown.inc()
            return handler  # type: ignore[return-value]
        return self._wrapped.of(method, handler, lambda h: rewrap(h, self._measured(method)))

    def _measured(self, full_method: str) -> Callable[[Behaviour], Behaviour]:
        """The wrapper of one method: its labelled children found once."""
        service, _, name = full_method.lstrip("/").rpartition("/")
        calls = self.metrics.calls
        latency = self.metrics.latency.labels(service, name)
        by_code: dict[grpc.StatusCode, Any] = {}

        def record(context: Any, started: float, failed: BaseException | None) -> None:
            latency.observe(time.perf_counter() - started)
            code = _code_of(context, failed)
            child = by_code.get(code)
            if child is None:
                child = by_code[code] = calls.labels(service, name, code.name)
            child.inc()

        def wrap(behaviour: Behaviour) -> Behaviour:
            if inspect.isasyncgenfunction(behaviour):

                async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    started, failed = time.perf_counter(), None
                    try:
                        async for response in behaviour(request, context):
                            yield response
                    except BaseException as exc:
                        failed = exc
                        raise
                    finally:
                        record(context, started, failed)

                return stream

            async def unary(request: Any, context: Any) -> Any:
                started, failed = time.perf_counter(), None
                try:
                    return await behaviour(request, context)
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    record(context, started, failed)

            return unary

        return wrap


def _code_of(context: Any, failed: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with: what the handler set or aborted with; else OK, or
    CANCELLED for a call cancelled, or UNKNOWN for an exception that escaped (grpc
    answers it so)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    if failed is None:
        return grpc.StatusCode.OK
    if isinstance(failed, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
