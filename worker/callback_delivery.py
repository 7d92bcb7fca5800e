"""Delivering completion callbacks: the loop every worker process runs.

It claims due events from the outbox (batchd.core.callbacks.outbox) as places among its
IN_FLIGHT deliveries free up, and POSTs each as a signed CloudEvent through the egress
guard (redirects not followed). A 2xx answer acknowledges the event; anything else —
another status, a timeout, a refused connection — is retried after an exponential,
jittered back-off until `callback_deadline` after the batch's end, when the event is
dropped, logged and counted. A destination the egress guard refuses is dropped at once. The batch is
already terminal: nothing here holds it up. See docs/design.md, "Completion callbacks".
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Final

import aiohttp
from yarl import URL

from batchd.core.callbacks import (
    CONTENT_TYPE,
    SIGNATURE_HEADER,
    CallbackOutbox,
    CallbackSecrets,
    ClaimedEvent,
    sign,
)
from batchd.core.config import Settings
from batchd.core.logs import get_logger
from batchd.worker.egress import EgressRefused, egress_session
from batchd.worker.metrics import WorkerMetrics
from batchd.worker.outages import REDIS_UNAVAILABLE, Outage

__all__ = ["CallbackDelivery", "retry_delay"]

log = get_logger(__name__)

# Deliveries one worker process runs at once.
IN_FLIGHT: Final = 16
# The longest wait between two attempts, jitter aside.
MAX_RETRY_DELAY: Final = 600.0
# A claim outlasts the POST's timeout (half as long again, and a second) before another
# worker may take the event over.
LEASE_FACTOR: Final = 1.5
LEASE_MARGIN: Final = 1.0
USER_AGENT: Final = "batchd-callbacks/1"


def retry_delay(first: float, tries: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `tries` failed ones: `first`, doubling each
    time up to MAX_RETRY_DELAY, each a random 50 to 100% of that (equal jitter)."""
    base = min(first * 2 ** max(tries - 1, 0), MAX_RETRY_DELAY)
    return float(base * (0.5 + rand() / 2))


class CallbackDelivery:
    def __init__(
        self,
        settings: Settings,
        outbox: CallbackOutbox,
        secrets: CallbackSecrets,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.secrets = secrets
        self.metrics = metrics
        self.clock = clock
        self.interval = min(settings.maintenance_interval, 1.0)
        self.lease = settings.callback_timeout * LEASE_FACTOR + LEASE_MARGIN

    async def run(self) -> None:
        """Delivers due events until cancelled; a Redis outage is waited out. Up to
        IN_FLIGHT deliveries run at once, and a freed place is claimed for at once: a
        receiver that takes its whole timeout holds up no other delivery. Deliveries
        still running when cancelled are cut short; their events come due again when
        their claims lapse."""
        outage = Outage(log, "callbacks", self.metrics.outages if self.metrics else None)
        headers = {"User-Agent": USER_AGENT}
        running: set[asyncio.Task[None]] = set()
        async with egress_session(self.settings, limit=IN_FLIGHT, headers=headers) as session:
            try:
                while True:
                    room = IN_FLIGHT - len(running)
                    claimed: list[ClaimedEvent] = []
                    if room > 0:
                        try:
                            claimed = await self.outbox.claim(self.clock(), self.lease, room)
                        except REDIS_UNAVAILABLE as exc:
                            outage.failed(exc)
                        else:
                            outage.recovered()
                    for event in claimed:
                        task = asyncio.create_task(self._settled(session, event))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    if room > 0 and len(claimed) == room:
                        continue  # perhaps more due: claim again at once
                    # Until a place frees up (then more may be due), or the next look.
                    if running:
                        await asyncio.wait(
                            running, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                        )
                    else:
                        await asyncio.sleep(self.interval)
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

    async def _settled(self, session: aiohttp.ClientSession, claimed: ClaimedEvent) -> None:
        """Delivers one event; an error settling it leaves it to come due again when its
        claim lapses."""
        try:
            await self._deliver(session, claimed)
        except Exception:
            log.warning("callback_settle_failed", event_id=claimed.event.event_id, exc_info=True)

    async def _deliver(self, session: aiohttp.ClientSession, claimed: ClaimedEvent) -> None:
        event = claimed.event
        context: dict[str, object] = {
            "event_id": event.event_id,
            "batch_id": event.batch_id,
            "host": URL(event.url).host,
            "attempt": claimed.tries,
        }
        secret = self.secrets.for_tenant(event.tenant)
        if secret is None:
            await self._failed(claimed, context, f"no signing secret for tenant {event.tenant!r}")
            return
        body = event.body()
        headers = {"Content-Type": CONTENT_TYPE, SIGNATURE_HEADER: sign(secret, body)}
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout)
        try:
            async with session.post(
                event.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
        except EgressRefused as exc:
            await self._drop(claimed, context, f"egress refused: {exc}")
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._failed(claimed, context, f"{type(exc).__name__}: {exc}")
            return
        if 200 <= status < 300:
            await self.outbox.acknowledge(claimed)
            self._count("delivered")
            log.info("callback_delivered", status=status, **context)
        else:
            await self._failed(claimed, context, f"HTTP {status}", status=status)

    async def _failed(
        self, claimed: ClaimedEvent, context: dict[str, object], error: str, status: int = 0
    ) -> None:
        """A failed attempt: retried after its back-off, or dropped past the deadline."""
        now = self.clock()
        deadline = claimed.event.ended_ms / 1000 + self.settings.callback_deadline
        if now >= deadline:
            await self._drop(claimed, context, f"deadline passed; last attempt: {error}")
            return
        self._count("failed")
        due = min(now + retry_delay(self.settings.callback_retry_delay, claimed.tries), deadline)
        if await self.outbox.retry_at(claimed, due):
            log.warning("callback_failed", error=error, retry_in=round(due - now, 3), **context)

    async def _drop(self, claimed: ClaimedEvent, context: dict[str, object], reason: str) -> None:
        if await self.outbox.drop(claimed):
            self._count("dropped")
            log.error("callback_dropped", reason=reason, **context)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.callbacks.labels(result).inc()
