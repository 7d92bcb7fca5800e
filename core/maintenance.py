"""Maintenance: the sweeps every server and worker runs every `maintenance_interval`.

Each sweep reaps expired leases (their chunks get a job that takes them over), expires
batches whose completion window closed, starts scheduled batches whose start time came,
cancels batches whose early upload lost its server, and moves the jobs an earlier
version left in its single queue to their handlers' queues. All five are safe to run in
any number of processes at once: every lease and every batch is handled by one Lua
call, atomically, and what one process did the next one finds done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.exceptions

from batchd.core.logs import get_logger
from batchd.core.metrics import MaintenanceMetrics
from batchd.core.store import BatchStore

__all__ = ["SweepResult", "maintenance_loop", "sweep"]

log = get_logger(__name__)


@dataclass(frozen=True)
class SweepResult:
    leases_reaped: int
    batches_expired: int
    legacy_jobs_moved: int = 0
    batches_started: int = 0
    uploads_lost: int = 0


async def sweep(store: BatchStore, now: float | None = None) -> SweepResult:
    """One sweep at `now` (default: the store's clock)."""
    now = store.clock() if now is None else now
    moved = await store.move_legacy_jobs()
    reaped = await store.reap_expired_leases(now)
    expired = await store.expire_batches(now)
    started = await store.start_scheduled(now)
    lost = await store.end_dead_uploads(now)
    return SweepResult(
        leases_reaped=reaped,
        batches_expired=expired,
        legacy_jobs_moved=moved,
        batches_started=started,
        uploads_lost=lost,
    )


async def maintenance_loop(
    store: BatchStore, interval: float, metrics: MaintenanceMetrics | None = None
) -> None:
    """Sweeps every `interval` seconds until cancelled. A failed sweep (Redis down, say)
    is logged and tried again at the next tick; it never ends the loop. `metrics` count
    what the sweeps did."""
    while True:
        try:
            result = await sweep(store)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("maintenance_failed", error=str(exc))  # Redis away: expected, brief
        except Exception:
            log.exception("maintenance_failed")
        else:
            if metrics is not None:
                metrics.leases_reaped.inc(result.leases_reaped)
                metrics.batches_expired.inc(result.batches_expired)
                metrics.scheduled_batches_started.inc(result.batches_started)
                metrics.uploads_lost.inc(result.uploads_lost)
            if (
                result.leases_reaped
                or result.batches_expired
                or result.legacy_jobs_moved
                or result.batches_started
                or result.uploads_lost
            ):
                log.info(
                    "maintenance_swept",
                    leases_reaped=result.leases_reaped,
                    batches_expired=result.batches_expired,
                    legacy_jobs_moved=result.legacy_jobs_moved,
                    batches_started=result.batches_started,
                    uploads_lost=result.uploads_lost,
                )
        await asyncio.sleep(max(interval, 0.01))
