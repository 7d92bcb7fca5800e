"""Chunk leases: a worker process keeps every chunk it holds claimed with one renewer.

A claim lasts `lease_ttl` seconds unless renewed. `LeaseKeeper.run` renews every lease
the process holds every `lease_ttl / 3` seconds in one store call. When the store says a
claim is lost (taken over after we looked dead, cancelled, expired, deleted) the lease is
marked lost and its chunk starts no more items; items in flight may finish and their
outcomes are still recorded (first writer wins).

A lease is "live" while it is known to be held: until `LIVE_SHARE` (0.9) of `ttl`
seconds after the last renewal (or claim) that succeeded, counted from when that call
was *sent*. Redis lets the claim lapse `ttl` seconds after it *received* that call, and
another worker may take the chunk over only then: a holder cut off from Redis stops in
time. A chunk starts items only on a live lease, and a lease that goes stale (renewals
fail: Redis away, or this worker cut off from it) abandons the attempts in flight
(batchd.worker.chunk_runner) so that they never run beside a new holder's. The chunk then
waits, until a renewal says whether it is still ours (it runs the abandoned items again)
or lost (the new holder runs them). See docs/design.md, "When a worker loses Redis".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from batchd.core.domain import BatchState, ClaimedChunk
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.worker.metrics import WorkerMetrics
from batchd.worker.outages import REDIS_UNAVAILABLE, Outage

__all__ = ["LIVE_SHARE", "Lease", "LeaseKeeper"]

log = get_logger(__name__)

LeaseKey = tuple[str, int, str]  # (batch_id, chunk, token)
# The share of a lease's ttl, from a successful renewal, that the holder runs items on:
# the rest (0.5 s of a 5 s lease) covers the time a renewal takes to reach Redis and the
# abandoned attempts take to end.
LIVE_SHARE = 0.9
# Batch states in which a holder starts items.
_RUNS = frozenset({BatchState.QUEUED, BatchState.RUNNING})


class Lease:
    """This process's claim on one chunk."""

    def __init__(self, batch_id: str, chunk: int, token: str, valid_until: float) -> None:
        self.batch_id = batch_id
        self.chunk = chunk
        self.token = token
        self.lost = asyncio.Event()
        # Items of the chunk this process has in flight, and what the store last took of
        # it (with a renewal or an outcome flush; a claim starts from 0).
        self.in_flight = 0
        self.reported = 0
        # The batch's state as a renewal or a max_concurrent call last saw it: a holder
        # learns of a pause or a cancel even with no outcome to record (`halted`).
        self.batch_state: BatchState | None = BatchState.RUNNING
        self._valid_until = valid_until  # time.monotonic()
        self._changed = asyncio.Event()

    @property
    def key(self) -> LeaseKey:
        return (self.batch_id, self.chunk, self.token)

    @property
    def live(self) -> bool:
        """Known to be held right now."""
        return not self.lost.is_set() and time.monotonic() < self._valid_until

    @property
    def live_until(self) -> float:
        """When the lease goes stale unless renewed (time.monotonic())."""
        return self._valid_until

    async def wait_changed(self) -> None:
        """Returns at the next renewal, failed renewal or loss."""
        self._changed.clear()
        await self._changed.wait()

    @property
    def halted(self) -> bool:
        """The batch no longer runs (paused, cancelling, finished or gone): start nothing
        more; the release hands the rest back (or cancels it)."""
        return self.batch_state not in _RUNS

    def learn(self, state: BatchState | None) -> None:
        self.batch_state = state

    def in_flight_report(self) -> int:
        """What to report of the items in flight: the count, or -1 when unchanged since
        the store last took it."""
        return -1 if self.in_flight == self.reported else self.in_flight

    def renewed(self, sent_at: float, live_for: float) -> None:
        self._valid_until = max(self._valid_until, sent_at + live_for)
        self._changed.set()

    def lose(self) -> None:
        self.lost.set()
        self._changed.set()

    def touch(self) -> None:
        """Wakes waiters (a renewal was tried, whatever came of it)."""
        self._changed.set()


class LeaseKeeper:
    """The leases of one worker process and their renewer (`run`, one task)."""

    def __init__(self, store: BatchStore, ttl: float, metrics: WorkerMetrics | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self._held: dict[LeaseKey, Lease] = {}
        self._outage = Outage(log, "lease_renewal", metrics.outages if metrics else None)
        self._renewals: tuple[Any, Any, Any] | None = None
        if metrics is not None:
            renewals = metrics.lease_renewals
            self._renewals = (
                renewals.labels("renewed"),
                renewals.labels("lost"),
                renewals.labels("failed"),
            )

    @property
    def interval(self) -> float:
        return self.ttl / 3

    @property
    def live_for(self) -> float:
        """Seconds a lease stays live after a renewal is sent."""
        return self.ttl * LIVE_SHARE

    def hold(self, claimed: ClaimedChunk, claimed_at: float) -> Lease:
        """Starts renewing a claim made at `claimed_at` (time.monotonic(), taken before
        claim_chunk was called)."""
        lease = Lease(claimed.batch_id, claimed.chunk, claimed.token, claimed_at + self.live_for)
        self._held[lease.key] = lease
        return lease

    def drop(self, lease: Lease) -> None:
        """Stops renewing: the chunk was released, handed back or lost."""
        self._held.pop(lease.key, None)

    def held(self) -> list[Lease]:
        return list(self._held.values())

    async def run(self) -> None:
        """Renews every `ttl / 3` seconds until cancelled; never raises otherwise."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew_once()
            except Exception:  # a bug must not end every chunk's renewals
                log.exception("lease_renewal_crashed")

    async def renew_once(self) -> None:
        leases = self.held()
        if not leases:
            # The chunks ended, so their last flushes reached Redis: any outage is over.
            self._outage.forget()
            return
        sent_at = time.monotonic()
        try:
            # A renewal stuck longer than a lease is useless: try afresh next round.
            async with asyncio.timeout(self.live_for):
                reports = [lease.in_flight_report() for lease in leases]
                claims = [
                    (*lease.key, report) for lease, report in zip(leases, reports, strict=True)
                ]
                results = await self.store.renew_leases(claims, self.ttl)
        except REDIS_UNAVAILABLE as exc:  # asyncio.timeout raises TimeoutError, one of them
            self._outage.failed(exc, leases=len(leases))
            if self._renewals is not None:
                self._renewals[2].inc(len(leases))
            for lease in leases:
                lease.touch()
            return
        except Exception:
            log.warning("lease_renewal_failed", leases=len(leases), exc_info=True)
            if self._renewals is not None:
                self._renewals[2].inc(len(leases))
            for lease in leases:
                lease.touch()
            return
        self._outage.recovered(leases=len(leases))
        if self._renewals is not None:
            self._renewals[0].inc(len(results) - results.count(None))
        for lease, state, report in zip(leases, results, reports, strict=True):
            if state is not None:
                lease.learn(state)
                lease.renewed(sent_at, self.live_for)
                if report >= 0:
                    lease.reported = report
                continue
            if lease.key not in self._held:
                continue  # released while the renewal was under way: not lost, just done
            log.warning("lease_lost", batch_id=lease.batch_id, chunk=lease.chunk)
            if self._renewals is not None:
                self._renewals[1].inc()
            lease.lose()
            self.drop(lease)
