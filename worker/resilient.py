"""arq's Worker, made to outlive Redis outages.

arq 0.28 (`arq/worker.py`) catches no Redis error in its main loop. Every poll
(`_poll_iteration`) reads the queue, starts jobs (`start_jobs`: a WATCH/MULTI per job),
reaps finished job tasks with `task.result()` and records its health; `Worker.main` awaits
it bare, so one `ConnectionError` ends `async_run` and the process. Worse:

- `start_jobs` counts a job as started (`job_counter`, `sem`) before its Redis calls; a
  failure there leaks the slot for good, and after `max_jobs` of them the worker polls
  forever without starting anything. And when the connection breaks after the EXEC that
  sets the job's in-progress key went through, the job is not started, yet no worker
  starts it until the key expires. A connection lost while WATCHing surfaces as
  `WatchError` from `pipe.exists`, which arq does not catch either.
- `run_job` sets `arq:in-progress:<job>` (for the job timeout + 10 s, an hour here) before
  its first Redis call; if that call, or `finish_job` after the job, fails, the task dies
  with the key still set, and no worker starts the job again until it expires.

`ResilientWorker` mends each of these without copying arq's code: a poll that fails for
want of Redis is logged (once per outage) and tried again after a backoff; `start_jobs`
gives back the slot of a job it could not start, and clears its in-progress key; `run_job`
clears the in-progress key of a job whose bookkeeping failed (retrying until Redis is
back) so that the job runs again.
The Redis client itself also retries each command (`outages.client_retry`), which hides
short blips from all of this.
"""

from __future__ import annotations

import contextlib
from typing import Any

import arq
from arq.constants import in_progress_key_prefix
from redis.exceptions import WatchError

from batchd.core.logs import get_logger
from batchd.worker.background import BackgroundTasks
from batchd.worker.outages import REDIS_UNAVAILABLE, Backoff, Outage

__all__ = ["ARQ_OUTAGE", "ResilientWorker"]

log = get_logger(__name__)

# What arq raises when Redis goes away: connection errors, and WatchError for a connection
# lost inside a WATCH (redis-py turns it into one).
ARQ_OUTAGE: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, WatchError)


class ResilientWorker(arq.Worker):
    """arq.Worker that keeps polling through Redis outages (see the module docstring)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._poll_outage = Outage(log, "queue_poll")
        self._poll_backoff = Backoff()
        self._clearing = BackgroundTasks()

    def _clear_later(self, job_id: str) -> None:
        self._clearing.spawn(self._let_job_run_again(job_id), f"clear {job_id}")

    async def stop_clearing(self) -> None:
        """Ends the clears still waiting for Redis (before the pool closes: a call that
        outlived it would reconnect a connection nobody closes); those jobs' in-progress
        keys then expire as arq set them to."""
        await self._clearing.cancel_all()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except ARQ_OUTAGE as exc:
            self._poll_outage.failed(exc)
            await self._poll_backoff.wait()
        else:
            self._poll_outage.recovered()
            self._poll_backoff.reset()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            try:
                await super().start_jobs([job_id])
            except Exception:
                # arq took the slot before the Redis calls that failed: give it back.
                self.job_counter -= 1
                self.sem.release()
                # The EXEC that set the job's in-progress key may have gone through with
                # only its reply lost: the job, not started here, would then wait an hour
                # for the key to expire. Clear it once Redis is back (a chunk job that
                # another worker did start meanwhile tolerates a second start).
                self._clear_later(job_id.decode())
                raise

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except ARQ_OUTAGE as exc:
            # Only arq's own bookkeeping gets here: a job's errors are caught inside.
            log.warning("job_bookkeeping_failed", job_id=job_id, error=type(exc).__name__)
            await self._let_job_run_again(job_id)

    async def _let_job_run_again(self, job_id: str) -> None:
        """Deletes the job's in-progress key, once Redis is back: the job, still queued,
        is then started again by some worker (a chunk job tolerates that)."""
        backoff = Backoff()
        while True:
            try:
                await self.pool.delete(in_progress_key_prefix + job_id)
            except REDIS_UNAVAILABLE:
                await backoff.wait()
                continue
            log.info("job_requeued_after_outage", job_id=job_id)
            return

    async def _delete_health_check(self) -> None:
        with contextlib.suppress(*ARQ_OUTAGE):
            await self.pool.delete(self.health_check_key)
