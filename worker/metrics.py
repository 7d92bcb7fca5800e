"""A worker's Prometheus metrics and its /metrics listener (Settings.worker_metrics_port).

The per-item figures (outcomes, retries, attempt durations) are tallied a flush at a
time, from the outcomes the flush recorded, into plain counters that a collector reads
at scrape time: nothing is added to an item's own path, and a flush of a thousand
outcomes costs a few C-level passes over them. The rest are prometheus_client metrics
whose labelled children are looked up once per chunk run or per bucket, never per item.
Names, types and labels: docs/operations.md, "Metrics".
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from functools import partial
from operator import attrgetter, sub
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from batchd.core.domain import ItemOutcome, ItemState
from batchd.core.metrics import (
    Listener,
    MaintenanceMetrics,
    OutageClock,
    metrics_response,
    new_registry,
    start_listener,
)
from batchd.worker.health import WorkerHealth

__all__ = ["ATTEMPT_BUCKETS", "HandlerTally", "WorkerMetrics", "start_worker_listener"]

# Upper bounds (seconds) of the attempt-duration buckets: from no-ops to the longest
# item timeouts of the built-in handlers (record.migrate: 900 s).
ATTEMPT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0,
)  # fmt: skip
# google.rpc codes by number, for the `code` label of failed items; a handler may fail an
# item with any int, which reads OTHER (labels stay bounded).
_CODE_NAMES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_STATE = attrgetter("state")
_START = attrgetter("start_time")
_END = attrgetter("end_time")
_bucket_of = partial(bisect_left, ATTEMPT_BUCKETS)


class HandlerTally:
    """One handler's recorded outcomes and attempt durations, as plain numbers."""

    __slots__ = ("buckets", "failed", "failed_codes", "retried", "succeeded", "sum")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.failed_codes: Tally[str] = Tally()
        self.buckets = [0] * (len(ATTEMPT_BUCKETS) + 1)  # the last: beyond every bound
        self.sum = 0.0

    def add(self, outcomes: list[ItemOutcome]) -> None:
        """Counts a flush's outcomes: per state, and each attempt's duration."""
        states = Tally(map(_STATE, outcomes))
        self.succeeded += states[ItemState.SUCCEEDED]
        failed = states[ItemState.FAILED]
        self.failed += failed
        self.retried += states[ItemState.PENDING]
        if failed:
            for outcome in outcomes:
                if outcome.state is ItemState.FAILED:
                    code = outcome.error_code
                    name = _CODE_NAMES[code] if 0 <= code < len(_CODE_NAMES) else "OTHER"
                    self.failed_codes[name] += 1
        starts = list(map(_START, outcomes))
        if None in starts:  # failed before an attempt (no handler, params not JSON)
            timed = [o for o in outcomes if o.start_time is not None and o.end_time is not None]
            starts = list(map(_START, timed))
            outcomes = timed
        durations = list(map(sub, map(_END, outcomes), starts))
        buckets = self.buckets
        for index, count in Tally(map(_bucket_of, durations)).items():
            buckets[index] += count
        self.sum += math.fsum(durations)


class _ItemCollector(Collector):
    """Reads the handlers' tallies at scrape time."""

    def __init__(self, tallies: dict[str, HandlerTally]) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        finished = CounterMetricFamily(
            "batchd_worker_items_finished",
            "Items this worker ended and recorded, by handler and outcome (succeeded, failed)",
            labels=["handler", "outcome"],
        )
        retries = CounterMetricFamily(
            "batchd_worker_retries_scheduled",
            "Failed attempts this worker recorded to be tried again after their back-off",
            labels=["handler"],
        )
        dead = CounterMetricFamily(
            "batchd_worker_items_dead_lettered",
            "Items this worker ended FAILED (no attempt left, or a permanent error), by "
            "handler and google.rpc code: what RetryBatchItems can run again",
            labels=["handler", "code"],
        )
        durations = HistogramMetricFamily(
            "batchd_worker_attempt_duration_seconds",
            "Seconds each recorded attempt took in its handler",
            labels=["handler"],
        )
        for handler, tally in sorted(self.tallies.items()):
            finished.add_metric([handler, "succeeded"], tally.succeeded)
            finished.add_metric([handler, "failed"], tally.failed)
            retries.add_metric([handler], tally.retried)
            for code, count in sorted(tally.failed_codes.items()):
                dead.add_metric([handler, code], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*ATTEMPT_BUCKETS, math.inf), tally.buckets, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            durations.add_metric([handler], buckets, tally.sum)
        yield from (finished, retries, dead, durations)

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class WorkerMetrics:
    """Every metric of one worker, in its own registry."""

    def __init__(self, handlers: list[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = new_registry() if registry is None else registry
        # Every served handler from the start, at zero: a rate() needs the first point.
        self.tallies = {name: HandlerTally() for name in handlers}
        registry.register(_ItemCollector(self.tallies))
        self.outages = OutageClock(registry)
        self.maintenance = MaintenanceMetrics(registry)
        self.items_in_flight = Gauge(
            "batchd_worker_items_in_flight",
            "Items this worker's handlers are running now",
            registry=registry,
        )
        self.concurrency = Gauge(
            "batchd_worker_concurrency",
            "Items this worker runs at once at most (worker_concurrency)",
            registry=registry,
        )
        self.chunk_jobs_in_flight = Gauge(
            "batchd_worker_chunk_jobs_in_flight",
            "Chunk jobs this worker runs now",
            registry=registry,
        )
        self.max_chunk_jobs = Gauge(
            "batchd_worker_max_chunk_jobs",
            "Chunk jobs this worker runs at once at most (worker_max_chunks)",
            registry=registry,
        )
        self.chunks_claimed = Counter(
            "batchd_worker_chunk_claims",
            "Chunks this worker claimed under a lease, by handler",
            ["handler"],
            registry=registry,
        )
        self.chunks_ended = Counter(
            "batchd_worker_chunk_runs",
            "Chunk runs that ended, by handler and how: done, cancelled, handed_back "
            "(drain or pause), lost (lease lost or batch gone), interrupted (cancelled "
            "mid-run: the worker stopping)",
            ["handler", "end"],
            registry=registry,
        )
        self.items_handed_back = Counter(
            "batchd_worker_items_handed_back",
            "Items of this worker's chunks given back unstarted, to run elsewhere or later",
            ["handler"],
            registry=registry,
        )
        self.lease_renewals = Counter(
            "batchd_worker_lease_renewals",
            "Chunk leases this worker tried to renew, by result: renewed, lost (taken "
            "over, cancelled, gone), failed (Redis did not answer)",
            ["result"],
            registry=registry,
        )
        self.rate_limit_wait = Counter(
            "batchd_worker_rate_limit_wait_seconds",
            "Seconds this worker's item starts waited for rate-limit permits, by the kind "
            "of the bucket that limits: batch (max_per_second), rate_limit_key, handler "
            "(a handler's key, such as a host)",
            ["kind"],
            registry=registry,
        )
        self.rate_limit_cuts = Counter(
            "batchd_worker_rate_limit_cuts",
            "Adaptive cuts of a rate after a SlowDown (429, 503), by kind of bucket",
            ["kind"],
            registry=registry,
        )
        self.callbacks = Counter(
            "batchd_worker_callbacks",
            "Completion-callback deliveries this worker settled, by result: delivered (a 2xx "
            "answer), failed (an attempt to be retried), dropped (past the deadline, or a "
            "destination the egress guard refuses)",
            ["result"],
            registry=registry,
        )
        for result in ("delivered", "failed", "dropped"):
            self.callbacks.labels(result)
        for handler in handlers:
            self.chunks_claimed.labels(handler)
            self.items_handed_back.labels(handler)
        for result in ("renewed", "lost", "failed"):
            self.lease_renewals.labels(result)

    def tally(self, handler: str) -> HandlerTally:
        tally = self.tallies.get(handler)
        if tally is None:  # a job for a handler not served: its items fail UNIMPLEMENTED
            tally = self.tallies[handler] = HandlerTally()
        return tally

    def watch(self, in_flight: Callable[[], float], chunk_jobs: Callable[[], float]) -> None:
        """Reads the worker's items and chunk jobs in flight at scrape time."""
        self.items_in_flight.set_function(in_flight)
        self.chunk_jobs_in_flight.set_function(chunk_jobs)

    def build_app(self, health: WorkerHealth | None = None) -> web.Application:
        """/metrics, and /healthz and /readyz when given the worker's `health`."""
        app = web.Application()
        if health is not None:
            health.add_routes(app)

        async def metrics(request: web.Request) -> web.Response:
            return metrics_response(self.registry)

        app.router.add_get("/metrics", metrics)
        return app


async def start_worker_listener(
    metrics: WorkerMetrics, host: str, port: int, health: WorkerHealth | None = None
) -> Listener:
    """The worker's /metrics (and /healthz, /readyz with `health`) on host:port;
    SettingError if the port cannot be bound."""
    app = metrics.build_app(health)
    return await start_listener(app, host, port, "--worker-metrics-port")
