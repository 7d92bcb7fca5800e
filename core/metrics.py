"""What the server's and the workers' Prometheus metrics share: a registry per process
part, the HTTP listener that serves it, and the metrics of the parts of core both run
(Redis outages, the maintenance sweeps).

Each server and each worker keeps its own `CollectorRegistry` (several may run in one
process: tests, batchd.testing) and passes its metric objects down explicitly; nothing
registers in prometheus_client's global registry. The metric names and labels are
listed in docs/operations.md, "Metrics".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from batchd.core.config import SettingError

__all__ = [
    "Listener",
    "MaintenanceMetrics",
    "OutageClock",
    "metrics_response",
    "new_registry",
    "start_listener",
]


def new_registry() -> CollectorRegistry:
    """A registry with the process's own metrics (CPU, memory, file descriptors, GC)."""
    registry = CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus's text format."""
    response = web.Response(body=prometheus_client.generate_latest(registry))
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.headers["Content-Type"] = prometheus_client.CONTENT_TYPE_LATEST
    return response


@dataclass
class Listener:
    """A running HTTP listener: its application, and the port it bound."""

    app: web.Application
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_listener(app: web.Application, host: str, port: int, setting: str) -> Listener:
    """Serves `app` on host:port (0: any free port). A port that cannot be bound (in use,
    not allowed) is a SettingError naming `setting`, not a traceback."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = exc.strerror or str(exc)
        raise SettingError(
            f"{setting} {port}: cannot listen on {host}:{port} ({reason}); each process "
            "on a host needs a port of its own, or 0 for none"
        ) from None
    bound = next(address[1] for address in runner.addresses if isinstance(address, tuple))
    return Listener(app, runner, int(bound))


class OutageClock(Collector):
    """Redis errors and the time spent without Redis, by operation (heartbeat,
    outcome_flush, ...): `batchd_redis_errors_total` and
    `batchd_redis_outage_seconds_total`, which counts an outage under way up to the
    scrape. Fed by `batchd.worker.outages.Outage` and the server's health monitor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._errors: dict[str, int] = {}
        self._closed: dict[str, float] = {}
        self._since: dict[str, float] = {}  # time.monotonic() an ongoing outage began
        if registry is not None:
            registry.register(self)

    def failed(self, operation: str) -> None:
        self._errors[operation] = self._errors.get(operation, 0) + 1
        self._since.setdefault(operation, time.monotonic())
        self._closed.setdefault(operation, 0.0)

    def recovered(self, operation: str) -> None:
        since = self._since.pop(operation, None)
        if since is not None:
            self._closed[operation] += time.monotonic() - since

    def collect(self) -> Iterator[CounterMetricFamily]:
        now = time.monotonic()
        errors = CounterMetricFamily(
            "batchd_redis_errors",
            "Redis calls that failed for want of Redis (refused, dropped, timed out), by operation",
            labels=["operation"],
        )
        seconds = CounterMetricFamily(
            "batchd_redis_outage_seconds",
            "Seconds an operation went without Redis, an outage under way included",
            labels=["operation"],
        )
        for operation, count in sorted(self._errors.items()):
            errors.add_metric([operation], count)
            ongoing = now - self._since[operation] if operation in self._since else 0.0
            seconds.add_metric([operation], self._closed[operation] + ongoing)
        yield errors
        yield seconds

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class MaintenanceMetrics:
    """What the maintenance sweeps (batchd.core.maintenance) did in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leases_reaped = Counter(
            "batchd_leases_reaped",
            "Expired chunk leases this process's sweeps took back (their holder looked "
            "dead): the chunks go to another worker",
            registry=registry,
        )
        self.batches_expired = Counter(
            "batchd_batches_expired",
            "Batches this process's sweeps ended EXPIRED as their completion window closed",
            registry=registry,
        )
        self.uploads_lost = Counter(
            "batchd_uploads_lost",
            "Batches this process's sweeps cancelled because the upload that started them "
            "early lost its server (its lease lapsed before its end message)",
            registry=registry,
        )
        self.scheduled_batches_started = Counter(
            "batchd_scheduled_batches_started",
            "Scheduled batches this process's sweeps started (their first chunk jobs "
            "enqueued) as their start time came",
            registry=registry,
        )
