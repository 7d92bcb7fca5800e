"""Delivering completion callbacks: the loop every worker process runs.

It claims due events from the outbox (batchd.core.callbacks.outbox) as places among its
IN_FLIGHT deliveries free up, at most PER_HOST of them for one receiver (host:port), and
POSTs each as a signed CloudEvent through the egress guard (redirects not followed). A
2xx answer acknowledges the event; anything else — another status, a timeout, a refused
connection — is retried after an exponential, jittered back-off (or a 429's or 503's
`Retry-After`, if later) until `callback_deadline` after the batch's end, when the event
is dropped, logged and counted. A destination the egress guard refuses is dropped at
once. The batch is already terminal: nothing here holds it up. See docs/design.md,
"Completion callbacks".
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
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

__all__ = ["CallbackDelivery", "retry_after", "retry_delay"]

log = get_logger(__name__)

# Deliveries one worker process runs at once.
IN_FLIGHT: Final = 16
# Of those, the most one receiver (host:port) may hold: a slow one leaves the rest to others.
PER_HOST: Final = 4
# The longest wait between two attempts, jitter aside.
MAX_RETRY_DELAY: Final = 600.0
# A claim outlasts the POST's timeout (half as long again, and a second) before another
# worker may take the event over.
LEASE_FACTOR: Final = 1.5
LEASE_MARGIN: Final = 1.0
USER_AGENT: Final = "batchd-callbacks/1"
# The answers whose Retry-After is honoured.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


def retry_delay(first: float, tries: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `tries` failed ones: `first`, doubling each
    time up to MAX_RETRY_DELAY, each a random 50 to 100% of that (equal jitter)."""
    base = min(first * 2 ** max(tries - 1, 0), MAX_RETRY_DELAY)
    return float(base * (0.5 + rand() / 2))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait from `now`, at most MAX_RETRY_DELAY: a
    count of seconds, or an HTTP-date (0 if past). None when absent or not one of those
    (a negative or fractional number, garbage): the receiver's word is ignored, not
    guessed at."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Long digit strings are huge anyway; int() of thousands of digits is refused.
        return MAX_RETRY_DELAY if len(value) > 6 else min(float(value), MAX_RETRY_DELAY)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": the RFC's dates are in GMT anyway
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_DELAY)


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
        self._running: set[asyncio.Task[None]] = set()
        # Deliveries running per receiver, "host:port".
        self._per_host: Counter[str] = Counter()

    async def run(self) -> None:
        """Delivers due events until cancelled; a Redis outage is waited out. Up to
        IN_FLIGHT deliveries run at once, PER_HOST of them for one receiver, and a freed
        place is claimed for at once: a receiver that takes its whole timeout holds up no
        other delivery, and one with many events not all places. Deliveries still running
        when cancelled are cut short; their events come due again when their claims
        lapse."""
        outage = Outage(log, "callbacks", self.metrics.outages if self.metrics else None)
        headers = {"User-Agent": USER_AGENT}
        running: set[asyncio.Task[None]] = set()
        self._running, self._per_host = running, Counter()
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
                    over = [event for event in claimed if not self._start(session, event)]
                    if over:
                        due = self.clock() + self.interval
                        await asyncio.gather(*(self._put_back(event, due) for event in over))
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

    def _start(self, session: aiohttp.ClientSession, claimed: ClaimedEvent) -> bool:
        """Starts delivering an event, unless its receiver holds PER_HOST places already."""
        url = URL(claimed.event.url)
        host = f"{url.host}:{url.port}"
        if self._per_host[host] >= PER_HOST:
            return False
        self._per_host[host] += 1
        task = asyncio.create_task(self._settled(session, claimed))
        self._running.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._running.discard(task)
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]

        task.add_done_callback(done)
        return True

    async def _put_back(self, claimed: ClaimedEvent, due: float) -> None:
        """An event claimed while its receiver was at its cap: due again at `due`, its try
        uncounted. If that fails, it comes due again when its claim lapses."""
        try:
            await self.outbox.release(claimed, due)
        except Exception:
            log.warning("callback_release_failed", event_id=claimed.event.event_id, exc_info=True)

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
                asked = None
                if status in RETRY_AFTER_STATUSES:
                    asked = retry_after(response.headers.get("Retry-After"), self.clock())
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
            await self._failed(claimed, context, f"HTTP {status}", asked)

    async def _failed(
        self,
        claimed: ClaimedEvent,
        context: dict[str, object],
        error: str,
        asked: float | None = None,
    ) -> None:
        """A failed attempt: retried after its back-off or the seconds the receiver
        `asked` for (Retry-After), whichever is longer, or dropped past the deadline."""
        now = self.clock()
        deadline = claimed.event.ended_ms / 1000 + self.settings.callback_deadline
        if now >= deadline:
            await self._drop(claimed, context, f"deadline passed; last attempt: {error}")
            return
        self._count("failed")
        delay = retry_delay(self.settings.callback_retry_delay, claimed.tries)
        due = min(now + max(delay, asked or 0.0), deadline)
        if await self.outbox.retry_at(claimed, due):
            log.warning("callback_failed", error=error, retry_in=round(due - now, 3), **context)

    async def _drop(self, claimed: ClaimedEvent, context: dict[str, object], reason: str) -> None:
        if await self.outbox.drop(claimed):
            self._count("dropped")
            log.error("callback_dropped", reason=reason, **context)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.callbacks.labels(result).inc()
