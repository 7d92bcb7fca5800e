"""A worker's /healthz (liveness) and /readyz (readiness), on its HTTP listener
(Settings.worker_metrics_port) beside /metrics; docs/operations.md, "Deploying".

/healthz answers 200 while ARQ's poll loop keeps going round: it ends a pass every
poll interval, or every backoff (at most a second) while Redis is away, so a loop that
has not ended one for `LOOP_STALL` seconds is stuck (a Redis reply that never comes on
a half-open connection, a handler blocking the event loop), and a restart is the cure.
Redis being away does not fail it: the worker rides out outages by design, and a
restarted one would only wait for Redis again, its chunks in hand lost to their leases.
/readyz answers 200 once the worker has published its handlers, until it drains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

__all__ = ["LOOP_STALL", "WorkerHealth"]

# Seconds without a finished pass of the poll loop after which /healthz answers 503.
LOOP_STALL: Final = 60.0


class WorkerHealth:
    """What /healthz and /readyz answer. `last_pass()` is the time.monotonic() at which
    the poll loop last ended a pass (or the worker was built, before the first)."""

    def __init__(
        self,
        last_pass: Callable[[], float],
        started: asyncio.Event,
        draining: asyncio.Event,
        *,
        stall_after: float = LOOP_STALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.last_pass = last_pass
        self.started = started
        self.draining = draining
        self.stall_after = stall_after
        self.clock = clock

    def liveness_problem(self) -> str | None:
        idle = self.clock() - self.last_pass()
        if idle > self.stall_after:
            return f"the poll loop has not ended a pass for {idle:.0f} s"
        return None

    def readiness_problem(self) -> str | None:
        if self.draining.is_set():
            return "draining"
        if not self.started.is_set():
            return "starting"
        return None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)

    async def _healthz(self, request: web.Request) -> web.Response:
        return _answer(self.liveness_problem())

    async def _readyz(self, request: web.Request) -> web.Response:
        return _answer(self.readiness_problem())


def _answer(problem: str | None) -> web.Response:
    if problem is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=problem + "\n")
