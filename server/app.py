"""Assembles the gRPC server: BatchService, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from batchd.core.background import BackgroundTasks
from batchd.core.config import SettingError, Settings
from batchd.core.gc_tuning import scale_with_streams
from batchd.core.logs import get_logger
from batchd.core.maintenance import maintenance_loop
from batchd.core.metrics import Listener, OutageClock
from batchd.core.redis_access import command_timeouts, connect, redis_access_problem
from batchd.core.redis_refusals import refuses_writes
from batchd.core.store import BatchStore
from batchd.core.watchers import WatcherCounts
from batchd.server.auth import AuthInterceptor, exposure_problem, startup_notice
from batchd.server.authenticators import build_authenticators
from batchd.server.batch_events import EventHub, follow_block_ms
from batchd.server.call_cap import CallCapInterceptor
from batchd.server.dashboard import mount_dashboard
from batchd.server.decoding import add_servicer
from batchd.server.metrics import GrpcMetricsInterceptor, ServerMetrics
from batchd.server.principal import Authenticator
from batchd.server.progress import ProgressHub
from batchd.server.servicer import BatchServicer
from batchd.server.tls import load_server_tls
from batchd.server.web import build_web_app, start_web
from batchd.v1 import batch_service_pb2

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)

# Seconds a stop waits for background tasks, and for the watches to close.
STOP_WAIT = 5.0

SERVICE_NAME = batch_service_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name
# SubmitBatch takes up to 4 MiB of items; the envelope gets a little room on top.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 64 * 1024
HEALTH_CHECK_INTERVAL = 1.0
# Least milliseconds between two pings a client may send on a connection without calls:
# 10 s, the shortest keepalive gRPC's clients allow themselves. Faster pingers are told
# to go away (too_many_pings).
MIN_CLIENT_PING_INTERVAL_MS = 10_000
# Calls gRPC may hold for the server before the server takes them up (see server_options).
MAX_PENDING_CALLS = 100_000
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The health service's name for "this process answers": SERVING from start to exit,
# whatever Redis does, for liveness probes (a server without Redis is not ready, "" and
# SERVICE_NAME say so, but restarting it would not bring Redis back).
LIVENESS_SERVICE = "liveness"


@dataclass
class BatchdServer:
    """A running server; `port` is the bound port (useful with port 0). `web` is its
    HTTP listener (/metrics, and the dashboard at /dashboard/; `web.app` takes more
    routes, `web.port` is its port), None with metrics_port 0. `store`, `servicer`,
    `authenticators` and `settings` are what another front end of the same service (the
    dashboard, batchd.server.dashboard) works through."""

    server: grpc.aio.Server
    port: int
    redis: Redis
    hub: ProgressHub
    health: health.aio.HealthServicer
    background: BackgroundTasks
    watchers: WatcherCounts | None = None
    web: Listener | None = None
    metrics: ServerMetrics | None = None
    store: BatchStore | None = None
    servicer: BatchServicer | None = None
    authenticators: tuple[Authenticator, ...] = ()
    settings: Settings | None = None
    events: EventHub | None = None

    async def stop(self, grace: float = 5.0, *, drain_delay: float = 0.0) -> None:
        """Reports NOT_SERVING and goes on answering for `drain_delay` seconds, so that
        health-checking clients go elsewhere first; then stops taking calls (GOAWAY),
        ends watches with UNAVAILABLE and gives the rest `grace` seconds to finish."""
        # Bounded: a task stuck in a Redis call that outlives its cancellation must not
        # hold the shutdown (the process ends with it anyway). The health monitor is one:
        # it must not report SERVING again.
        stuck = await self.background.cancel_all(within=STOP_WAIT)
        if stuck:
            log.warning("server_tasks_not_stopped", tasks=stuck)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        if drain_delay > 0:
            log.info("server_draining", seconds=drain_delay)
            await asyncio.sleep(drain_delay)
        # New calls are refused from here on, so that no watch reconnects to this server.
        stopping = asyncio.create_task(self.server.stop(grace))
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self.hub.close()
                if self.events is not None:
                    await self.events.close()
        except TimeoutError:
            log.warning("server_watches_not_closed")
        await stopping
        if self.watchers is not None:
            try:
                await self.watchers.withdraw()
            except Exception as exc:  # its streams stop counting when its liveness lapses
                log.warning("watchers_not_withdrawn", error=str(exc))
        if self.web is not None:
            await self.web.close()
        await self.redis.aclose()
        log.info("server_stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_server(
    settings: Settings,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    tracing: Tracing | None = None,
) -> BatchdServer:
    """Starts serving on settings.host:port (or `port`, 0 for any free one), over TLS
    when the settings name a certificate (TLSConfigError for a bad one), and /metrics and
    the dashboard (settings.dashboard) on settings.metrics_host:metrics_port (0: none; or
    `metrics_port`, 0 for any free one).
    SettingError if the settings cannot work (Redis refuses the URL's credentials, too;
    the metrics port is taken) or would serve the network unauthenticated. `tracing`: a
    span per call, and batches that keep their call's trace context for the workers
    (batchd.core.tracing)."""
    problem = exposure_problem(settings)
    if problem:
        raise SettingError(problem)
    tls = load_server_tls(settings)  # TLSConfigError, a SettingError, for a bad file
    problem = await redis_access_problem(settings.redis_url)  # an outage is waited out
    if problem:
        raise SettingError(problem)
    redis = connect(settings.redis_url, health_check_interval=10, **_timeouts(settings))
    store = BatchStore.from_settings(redis, settings)
    hub = ProgressHub(store, worker_ttl=settings.worker_ttl, ended_channel=store.keys.ended)
    hub.start()
    events = None
    if settings.events_retain > 0:
        events = EventHub(store.events, follow_block_ms(settings.redis_timeout))

    def watchers_open() -> int:
        return hub.watchers_open + (events.streams_open if events is not None else 0)

    watchers = None
    if settings.tenant_max_watchers > 0:
        if settings.server_ttl <= 0:
            raise SettingError(f"--server-ttl {settings.server_ttl:g}: more than 0 seconds")
        watchers = WatcherCounts(
            redis,
            store.keys,
            limit=settings.tenant_max_watchers,
            ttl=settings.server_ttl,
        )
    authenticators = build_authenticators(settings, redis)
    web_port = (settings.metrics_port or None) if metrics_port is None else metrics_port
    metrics = None
    if web_port is not None:
        metrics = ServerMetrics(store, worker_ttl=settings.worker_ttl, watchers_open=watchers_open)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tracing is not None:  # outermost: refused calls get spans too
        interceptors.append(tracing.server_interceptor())
    if metrics is not None:  # next: the calls the others refuse are counted too
        interceptors.append(GrpcMetricsInterceptor(metrics))
    if settings.grpc_max_concurrent_calls > 0:  # first, so outermost: refusals skip auth
        interceptors.append(CallCapInterceptor(settings.grpc_max_concurrent_calls))
    if authenticators:  # --auth none: every call is principal.ANONYMOUS
        interceptors.append(
            AuthInterceptor(authenticators, guard_reflection=settings.reflection != "open")
        )
    server = grpc.aio.server(
        interceptors=interceptors,
        options=server_options(settings),
    )
    servicer = BatchServicer(store, hub, settings, watchers, metrics, tracing, events)
    add_servicer(servicer, server, serialized={"WatchProgress": servicer.watch_progress_serialized})
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    if settings.reflection != "off":
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    address = f"{settings.host}:{settings.port if port is None else port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, tls.credentials())
    web = None
    if metrics is not None and web_port is not None:
        try:
            web_app = build_web_app(metrics)
            mount_dashboard(
                web_app,
                store,
                hub,
                authenticators,
                settings,
                host=settings.metrics_host,
                servicer=servicer,
                watchers=watchers,
            )
            web = await start_web(web_app, settings.metrics_host, web_port)
        except SettingError:
            await server.stop(None)
            await redis.aclose()
            raise
    background = BackgroundTasks()
    if settings.gc_threshold > 0:  # 0: the interpreter's settings, left alone
        background.spawn(scale_with_streams(watchers_open), "gc-threshold")
    if watchers is not None:
        await watchers.heartbeat()  # counted among the live servers before any watch
        background.spawn(watchers.run(), "watch-heartbeat")
    await server.start()
    redis_health = _RedisHealth(store, health_servicer, metrics.outages if metrics else None)
    await redis_health.check()  # callers see a real status from the first moment
    background.spawn(redis_health.run(), "health-monitor")
    # Servers sweep too, so that completion windows end even while no worker runs.
    background.spawn(
        maintenance_loop(
            store, settings.maintenance_interval, metrics.maintenance if metrics else None
        ),
        "maintenance",
    )
    transport = "plaintext" if tls is None else "mtls" if tls.mutual else "tls"
    log.info(
        "server_started",
        port=bound,
        auth=settings.auth,
        transport=transport,
        metrics_port=web.port if web else None,
    )
    notice = startup_notice(settings, bound)
    if notice:
        print(notice, file=sys.stderr, flush=True)
        (log.warning if settings.insecure else log.info)("authentication_off", notice=notice)
    return BatchdServer(
        server,
        bound,
        redis,
        hub,
        health_servicer,
        background,
        watchers,
        web,
        metrics,
        store=store,
        servicer=servicer,
        authenticators=tuple(authenticators),
        settings=settings,
        events=events,
    )


def _timeouts(settings: Settings) -> dict[str, float | None]:
    """The server's bound on a Redis reply (docs/operations.md, "When Redis is unreachable
    or full"): `redis_timeout`, plus the replicas' acknowledgement time for the WAIT a
    submit may end with."""
    seconds = settings.redis_timeout
    if seconds > 0 and settings.redis_min_replicas_ack > 0:
        seconds += settings.redis_replica_ack_timeout
    return command_timeouts(seconds)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: message size, and the keepalive and
    connection-age policy of the settings (seconds there, milliseconds here)."""

    def ms(seconds: float) -> int:
        # 0 in the settings: no limit, which gRPC spells as INT_MAX.
        return round(seconds * 1000) if seconds > 0 else 2**31 - 1

    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout)),
        # Keepalive goes on while no call is open, and its pings need no data between.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace)),
        ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle)),
        ("grpc.max_concurrent_streams", max(settings.grpc_max_concurrent_streams, 1)),
        # Calls arrived but not yet taken up by the server's event loop: gRPC refuses them
        # at random past 1,000 (all past 3,000), and its refusal reaches the client as a
        # bare CANCELLED. Watchers arriving by the thousand queue there for a moment.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]


class _RedisHealth:
    """Reports NOT_SERVING while Redis does not answer: without it we can do nothing."""

    def __init__(
        self,
        store: BatchStore,
        servicer: health.aio.HealthServicer,
        outages: OutageClock | None = None,
    ) -> None:
        self.store = store
        self.servicer = servicer
        self.serving: bool | None = None
        self.outages = outages  # the metrics' count of Redis errors and outage time

    async def check(self) -> None:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # cancellation that stops the monitor.
            async with asyncio.timeout(HEALTH_CHECK_INTERVAL):
                alive = await self.store.ping()
        except Exception as exc:
            # Redis answering MISCONF (it does to PING too) is reachable: reads work, and
            # writes fail with a status of their own (batchd.core.redis_refusals).
            alive = refuses_writes(exc)
        if self.outages is not None:
            if alive:
                self.outages.recovered("health_check")
            else:
                self.outages.failed("health_check")
        if alive != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING if alive else NOT_SERVING
            for name in ("", SERVICE_NAME):
                await self.servicer.set(name, status)
            log.info("health_changed", serving=alive)
            self.serving = alive

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
            await self.check()
