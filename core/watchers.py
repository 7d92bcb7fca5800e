"""Open watch streams (WatchProgress, WatchBatches) per tenant, counted across every
server on one Redis.

A server keeps its own count per tenant in memory and its share in Redis: one hash per
tenant of server id -> streams open there (`Keys.tenant_watchers`), moved by one script
call per stream opened or closed, beside a zset of the live servers (`Keys.watch_servers`)
that each renews every third of `ttl`. A stream opens only while the tenant has fewer
than `limit` open on live servers, so a SIGKILLed server's streams stop counting once
its liveness lapses. Each heartbeat writes the server's own counts again: a write lost
to a cancellation or an outage, or a Redis restart, is mended within a third of `ttl`.
See docs/design.md, "Watchers".
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from redis.asyncio import Redis

from batchd.core.errors import Exhausted
from batchd.core.keys import Keys
from batchd.core.logs import get_logger

__all__ = ["LIMIT_SETTING", "WATCHERS_RETRY_AFTER", "WatcherCounts", "server_id"]

log = get_logger(__name__)

# The setting a refusal names (Settings.tenant_max_watchers).
LIMIT_SETTING = "BATCHD_TENANT_MAX_WATCHERS"
# Seconds a refused watcher is told to wait: streams of dashboards and CLIs come and go.
WATCHERS_RETRY_AFTER = 5.0
# A tenant's hash lives this many TTLs past its last write: the heartbeats of the servers
# with its streams open renew it every third of one.
_HASH_TTLS = 3


def server_id() -> str:
    """A name for this server process, unique among all: host, pid, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class WatcherCounts:
    """One server's WatchProgress streams per tenant, and the tenants' limit over all
    servers. `ttl`: seconds after its last heartbeat a server counts as gone."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        limit: int,
        ttl: float,
        server: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit: at least 1 (no WatcherCounts at all for no limit)")
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self.ttl = ttl
        self.server = server or server_id()
        self.clock = clock
        self._local: Counter[str] = Counter()
        self._writes: set[asyncio.Task[object]] = set()  # closes being written
        self._withdrawn = False
        self._open = redis.register_script(_source("open_watcher.lua"))
        self._close = redis.register_script(_source("close_watcher.lua"))
        self._heartbeat = redis.register_script(_source("watch_heartbeat.lua"))

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats."""
        return self.ttl / 3

    @asynccontextmanager
    async def held(self, tenant: str) -> AsyncIterator[None]:
        """A stream of `tenant` counted open for the block (see `open`)."""
        await self.open(tenant)
        try:
            yield
        finally:
            await self.close(tenant)

    async def open(self, tenant: str) -> None:
        """Counts a stream of `tenant` opened here; Exhausted, counting nothing, when the
        tenant has `limit` streams open on the live servers."""
        self._local[tenant] += 1  # the heartbeat mends Redis if this call is cut short
        try:
            opened, streams = await self._open(
                keys=[self.keys.tenant_watchers(tenant), self.keys.watch_servers],
                args=[self.server, self.limit, self._now_ms(), self._hash_ttl_ms()],
            )
        except BaseException:
            self._local[tenant] -= 1
            raise
        if not opened:
            self._local[tenant] -= 1
            raise Exhausted(
                f"tenant {tenant!r} has {streams} watch streams (WatchProgress, "
                f"WatchBatches) open "
                f"(limit {self.limit}, {LIMIT_SETTING})",
                WATCHERS_RETRY_AFTER,
                quota_subject=f"tenant:{tenant}:max_watchers",
                quota_description=(
                    f"the tenant's open WatchProgress and WatchBatches streams, across "
                    f"all servers: "
                    f"at most {self.limit} ({LIMIT_SETTING})"
                ),
            )

    async def close(self, tenant: str) -> None:
        """Counts a stream of `tenant` closed here. Never fails, nor stops half way when
        cancelled: a write that does not happen is mended by the next heartbeat."""
        self._local[tenant] -= 1
        if self._withdrawn:  # the server's fields are gone already
            return
        write = asyncio.ensure_future(
            self._close(keys=[self.keys.tenant_watchers(tenant)], args=[self.server])
        )
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("watcher_close_not_written", tenant=tenant, error=str(exc))

    async def heartbeat(self) -> None:
        """Renews this server's liveness and writes its open streams per tenant."""
        counts = dict(self._local)
        tenants = sorted(counts)
        now = self._now_ms()
        await self._heartbeat(
            keys=[self.keys.watch_servers, *(self.keys.tenant_watchers(t) for t in tenants)],
            args=[
                self.server,
                now + int(self.ttl * 1000),
                now,
                self._hash_ttl_ms(),
                *(counts[t] for t in tenants),
            ],
        )
        for tenant in tenants:  # written as none: no need to write them again
            if counts[tenant] <= 0 and self._local[tenant] == counts[tenant]:
                del self._local[tenant]

    async def run(self) -> None:
        """Heartbeats every `interval` seconds, for ever; an outage is logged, not fatal."""
        while True:
            try:
                await self.heartbeat()
            except Exception as exc:
                log.warning("watch_heartbeat_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def withdraw(self) -> None:
        """This server's streams stop counting at once (a graceful stop); streams closed
        from now on write nothing."""
        self._withdrawn = True
        if self._writes:
            await asyncio.wait(self._writes)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.watch_servers, self.server)
            for tenant in self._local:
                pipe.hdel(self.keys.tenant_watchers(tenant), self.server)
            await pipe.execute()
        self._local.clear()

    async def open_streams(self, tenant: str) -> int:
        """The streams of `tenant` open on the live servers, as the limit counts them."""
        counts = await self.redis.hgetall(self.keys.tenant_watchers(tenant))  # type: ignore[misc]
        if not counts:
            return 0
        servers = list(counts)
        lapses = await self.redis.zmscore(self.keys.watch_servers, servers)
        now = self._now_ms()
        return sum(
            int(counts[server])
            for server, lapse in zip(servers, lapses, strict=True)
            if bytes(server).decode() == self.server or (lapse is not None and lapse >= now)
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _hash_ttl_ms(self) -> int:
        return int(self.ttl * _HASH_TTLS * 1000)


def _source(name: str) -> str:
    return resources.files("batchd.core").joinpath("lua", name).read_text(encoding="utf-8")
