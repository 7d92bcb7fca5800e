"""batchd's ARQ worker: the one module that subclasses `arq.Worker` (arq 0.28).

It adds six things to ARQ's poll loop, described in docs/design.md ("Workers" and
"ARQ, and what batchd relies on", which lists every ARQ internal used here;
tests/worker/test_arq_internals.py pins each one and fails naming it when ARQ changes):

- **Routing.** The worker reads the queues of the handlers it serves, merged by score;
  ARQ's own code reads `self.queue_name`, which here is the queue of the job being
  handled, carried by a context variable into the job's task.
- **Outages.** A poll, a job start or a job's bookkeeping that fails for want of Redis
  is tried again (or its job left to run again) instead of ending the worker
  (`batchd.worker.outages`).
- **Drain and close.** SIGTERM/SIGINT also tell the chunks in hand to start no more
  items; `close` tolerates job tasks that ended cancelled and closes the pool with
  redis-py 5's `aclose()`.
- **Wake-ups.** The wait between polls ends early when a commit publishes a served
  queue's key (`Keys.wake`, batchd.core.wakeups).
- **Short in-progress marks.** A started job's mark lasts `MARK_LEASES` leases, renewed
  while the job runs, rather than ARQ's job timeout.
- **Job starts in one round trip.** A job's in-progress check and mark are one script
  (core/lua/start_job.lua), not ARQ's WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import arq
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.utils import timestamp_ms
from redis.exceptions import RedisError, WatchError

from batchd.core import wakeups
from batchd.core.background import BackgroundTasks
from batchd.core.config import Settings
from batchd.core.jobs import RUN_CHUNK, deserialize, serialize
from batchd.core.logs import get_logger
from batchd.core.redis_access import command_timeouts, connect
from batchd.core.scripts import start_job_script
from batchd.worker.outages import (
    REDIS_UNAVAILABLE,
    RETRY_ON,
    Backoff,
    Outage,
    client_retry,
    waited_out,
)

__all__ = [
    "ARQ_OUTAGE",
    "JOB_MAX_TRIES",
    "JOB_TIMEOUT",
    "SHUTDOWN_GRACE",
    "BatchdWorker",
    "arq_pool",
    "run_later",
]

log = get_logger(__name__)

# A chunk job's time limit. Long, because a job that times out is dropped with its chunk
# still claimed (its lease then expires and the chunk is taken over). A crashed worker's
# chunk does not wait for it: its lease expires within lease_ttl.
JOB_TIMEOUT = 3600
# Leases (BATCHD_LEASE_TTL) a chunk job's in-progress mark lasts unrenewed.
MARK_LEASES = 3
# Runs of one chunk job: stops and Redis errors each use one.
JOB_MAX_TRIES = 10
# On SIGTERM/SIGINT, how long the jobs in hand may run before they are cancelled (and
# requeued). Under batchd-service's 30 s wait before it kills the worker.
SHUTDOWN_GRACE = 20

# Seconds a connection to Redis may take to open (ARQ's own default).
CONNECT_TIMEOUT = 1.0
DEFAULT_REDIS_TIMEOUT: float = Settings.redis_timeout

# What arq raises when Redis goes away: connection errors, and WatchError for a connection
# lost inside a WATCH (redis-py turns it into one).
ARQ_OUTAGE: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, WatchError)

# The queue of the job whose start or run this context belongs to (see `queue_name`).
_job_queue: ContextVar[str | None] = ContextVar("batchd_job_queue", default=None)


def run_later(seconds: float) -> BaseException:
    """What a job raises to be run again `seconds` from now, its chunk untouched."""
    return arq.Retry(defer=seconds)


def arq_pool(url: str, timeout: float = DEFAULT_REDIS_TIMEOUT) -> ArqRedis:
    """ARQ's Redis client for `url` (a sentinel URL too), built by batchd's one factory
    (`batchd.core.redis_access.connect`), retrying a command whose connection breaks.

    Handed to arq.Worker as `redis_pool`: ARQ builds its own only from `RedisSettings`,
    whose `from_dsn` keeps percent-encoded credentials encoded and drops a rediss://
    URL's TLS parameters, and whose Sentinel mode passes neither the retry policy nor
    the Sentinels' credentials.

    A reply waits at most `timeout` seconds (`Settings.redis_timeout`; 0: no bound): a
    connection gone silent in a network partition is then dropped, and the worker's
    commands reach Redis again on fresh connections once the network heals."""
    return connect(
        url,
        redis_class=ArqRedis,
        **{**command_timeouts(timeout), "socket_connect_timeout": CONNECT_TIMEOUT},
        retry=client_retry(),
        retry_on_error=RETRY_ON,
    )


Hook = StartupShutdown


class BatchdWorker(arq.Worker):
    """arq.Worker running `run_chunk` jobs from the queues of the handlers it serves,
    through Redis outages.

    `queues`: the served handlers' queues (at least one). `max_jobs`: chunk jobs at once.
    `on_startup(ctx)` gets ARQ's ctx with the Redis pool in `ctx["redis"]`, and every job
    a copy of it (plus `job_id`, `job_try`, `score`); `on_shutdown(ctx)` runs in `close`,
    which always follows `async_run`. `draining` is set on SIGTERM/SIGINT; `worker_id`
    and `started` are for the worker's owner. `options` go to arq.Worker as they are.
    """

    def __init__(
        self,
        run_chunk: WorkerCoroutine,
        *,
        queues: Sequence[str],
        redis_url: str,
        redis_timeout: float = DEFAULT_REDIS_TIMEOUT,
        max_jobs: int,
        on_startup: Hook,
        on_shutdown: Hook,
        worker_id: str,
        started: asyncio.Event,
        draining: asyncio.Event,
        wake_channel: str | None = None,
        poll_delay: float = 0.5,
        lease_ttl: float = 5.0,
        **options: Any,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue (a handler to serve)")
        self.queues = list(queues)
        self._idle_queue = self.queues[0]
        self._job_queues: dict[bytes, str] = {}
        super().__init__(
            functions=[arq.func(run_chunk, name=RUN_CHUNK, timeout=JOB_TIMEOUT)],
            queue_name=self.queues[0],
            redis_pool=arq_pool(redis_url, redis_timeout),
            job_serializer=serialize,
            job_deserializer=deserialize,
            max_jobs=max_jobs,
            keep_result=0,  # nobody reads ARQ results: outcomes live in the store
            max_tries=JOB_MAX_TRIES,
            job_completion_wait=SHUTDOWN_GRACE,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
            # The wait between polls is `_until_woken`'s, at the end of each pass.
            poll_delay=0,
            **options,
        )
        self._poll_delay = poll_delay
        self._start_job_script: Callable[..., Awaitable[Any]] = start_job_script(self.pool)
        # ARQ marks a job it starts as in progress for the job's whole timeout (an hour),
        # and no worker starts it again meanwhile: a worker killed between that mark and
        # its claim of the job's chunk (which a lapsed lease would hand on) would leave
        # the chunk waiting that long. Here the mark lasts MARK_LEASES leases and the
        # worker renews the marks of the jobs it holds every lease (`_keep_marks`).
        self._lease_ttl = lease_ttl
        self.in_progress_timeout_s = MARK_LEASES * lease_ttl
        self._marking: asyncio.Task[None] | None = None
        self._wake_channel = wake_channel
        self._woken = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None
        self.worker_id = worker_id
        self.started = started
        self._draining = draining
        self.poll_outage = Outage(log, "queue_poll")
        # The worker's metrics and the port of their listener, once started (if any).
        self.metrics: Any = None
        self.metrics_port: int | None = None
        self._poll_backoff = Backoff()
        self._clearing = BackgroundTasks()
        # time.monotonic() of the poll loop's last finished pass (its start before the
        # first): the worker's liveness (batchd.worker.health).
        self.last_pass = time.monotonic()

    async def main(self) -> None:
        """arq's `main` once Redis answers. Given a pool, ARQ would end at its first
        command while Redis is away; the worker waits the outage out, as it does later
        (a Sentinel still electing a primary, say)."""
        outage = Outage(log, "worker_start")
        backoff = Backoff()
        while True:
            try:
                await self.pool.ping()
            except REDIS_UNAVAILABLE as exc:
                outage.failed(exc)
                await backoff.wait()
            else:
                outage.recovered()
                break
        if self._wake_channel is not None:
            # On (re)subscribing, look once: jobs added while it was not are not told.
            self._listening = asyncio.create_task(
                wakeups.listen(self.pool, self._wake_channel, self._on_wake, self._woken.set)
            )
        self._marking = asyncio.create_task(self._keep_marks())
        await super().main()

    # -- routing ----------------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        """The queue of the job being started, run or finished in this context; outside
        one, a served queue that had jobs at the last poll (ARQ's burst mode stops when
        it is empty, and its health check counts it)."""
        return _job_queue.get() or self._idle_queue

    @queue_name.setter
    def queue_name(self, value: str) -> None:  # arq.Worker.__init__ sets it
        self._idle_queue = value

    async def _poll_iteration(self) -> None:
        """arq's `_poll_iteration`, reading every served queue; Redis outages waited out."""
        try:
            if self.allow_pick_jobs and self.job_counter < self.max_jobs:
                await self.start_jobs(await self._read_queues())
            for job_id, task in list(self.tasks.items()):
                if task.done():
                    del self.tasks[job_id]
                    task.result()  # as arq: errors in run_job propagate
            await self.heart_beat()
        except Exception as exc:
            if not (isinstance(exc, ARQ_OUTAGE) or waited_out(exc)):
                raise
            self.poll_outage.failed(exc)
            await self._poll_backoff.wait()
        else:
            self.poll_outage.recovered()
            self._poll_backoff.reset()
        self.last_pass = time.monotonic()
        await self._until_woken()

    async def _until_woken(self) -> None:
        """Waits `poll_delay` seconds, or less if a served queue gets a job meanwhile."""
        await wakeups.wait(self._woken, self._poll_delay)

    def _wake(self, _: object = None) -> None:
        self._woken.set()

    def _on_wake(self, queue: bytes) -> None:
        """A job due at once was added to `queue` (`Keys.wake`): look if it is served."""
        if queue.decode() in self.queues:
            self._woken.set()

    async def _keep_marks(self) -> None:
        """Renews the in-progress marks of the jobs in hand every `lease_ttl` seconds;
        a renewal Redis misses is tried at the next (MARK_LEASES of them pass before a
        mark lapses)."""
        ttl_ms = round(self.in_progress_timeout_s * 1000)
        while True:
            await asyncio.sleep(self._lease_ttl)
            held = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not held:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in held:
                        pipe.pexpire(in_progress_key_prefix + job_id, ttl_ms)  # only if set
                    await pipe.execute()
            except (RedisError, OSError) as exc:  # away, or refusing writes: next time
                log.debug("job_marks_not_renewed", error=type(exc).__name__)

    async def _read_queues(self) -> list[bytes]:
        """The due jobs at the head of the served queues, in score order across them (as
        one queue holding them all would give): at most `queue_read_limit`."""
        now = timestamp_ms()
        count = self.queue_read_limit
        async with self.pool.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zrangebyscore(queue, "-inf", now, start=0, num=count, withscores=True)
            if self.burst:
                for queue in self.queues:
                    pipe.zcard(queue)
            replies = await pipe.execute()
        heads: list[tuple[float, bytes, str]] = []
        for queue, jobs in zip(self.queues, replies, strict=False):
            heads.extend((score, job_id, queue) for job_id, score in jobs)
        if self.burst:
            sizes = replies[len(self.queues) :]
            self._idle_queue = next(
                (q for q, size in zip(self.queues, sizes, strict=True) if size), self.queues[0]
            )
        heads.sort()
        self._job_queues = {job_id: queue for _, job_id, queue in heads[:count]}
        return list(self._job_queues)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs` (`_start_job`), a job at a time, each in its queue's context
        (the task it creates for the job copies the context: `run_job` and `finish_job`
        see the queue); a job that could not be started gives its slot back."""
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            name = job_id.decode()
            running = self.tasks.get(name)
            if running is not None and not running.done():
                continue  # running here: still queued (until it ends) and marked
            queue = _job_queue.set(self._job_queues.get(job_id, self.queues[0]))
            try:
                await self._start_job(name)
            except Exception:
                # The slot was taken before the Redis call that failed: give it back.
                self._job_slot_freed()
                # The script that set the job's in-progress key may have run with only
                # its reply lost: the job, not started here, would then wait an hour
                # for the key to expire. Clear it once Redis is back (a chunk job that
                # another worker did start meanwhile tolerates a second start).
                self._clear_later(name)
                raise
            finally:
                _job_queue.reset(queue)

    async def _start_job(self, job_id: str) -> None:
        """arq's `start_jobs` for one job, its look and mark in one script
        (core/lua/start_job.lua) rather than a WATCH, three commands and a MULTI/EXEC:
        one round trip, where two workers reading the same queue head each made five for
        every job that only one of them would get. As arq: a slot (`sem`, `job_counter`)
        is taken before the Redis call and given back if the job is not started (the
        caller gives it back if the call fails)."""
        await self.sem.acquire()
        if self.job_counter >= self.max_jobs:
            self.sem.release()
            return
        self.job_counter += 1
        mark_ms = round(self.in_progress_timeout_s * 1000)
        score = await self._start_job_script(
            keys=[in_progress_key_prefix + job_id, self.queue_name],
            args=[job_id, timestamp_ms(), mark_ms],
        )
        if score is None:  # started elsewhere, done, or queued for later
            self._job_slot_freed()
            log.debug("job_not_started", job_id=job_id)
            return
        # The task copies the context, and with it the job's queue (`queue_name`).
        task = asyncio.create_task(self.run_job(job_id, int(float(score))))
        task.add_done_callback(self._job_ended)
        self.tasks[job_id] = task

    def _job_slot_freed(self) -> None:
        self.job_counter -= 1
        self.sem.release()

    def _job_ended(self, _: object) -> None:
        """The job's slot is free: the worker looks at the queues at once, not at its
        next poll."""
        self._job_slot_freed()
        self._wake()

    # -- outages ----------------------------------------------------------------------
    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except ARQ_OUTAGE as exc:
            # Only arq's own bookkeeping gets here: a job's errors are caught inside.
            log.warning("job_bookkeeping_failed", job_id=job_id, error=type(exc).__name__)
            await self._let_job_run_again(job_id)

    def _clear_later(self, job_id: str) -> None:
        self._clearing.spawn(self._let_job_run_again(job_id), f"clear {job_id}")

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

    # -- drain and close --------------------------------------------------------------
    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT: arq stops taking jobs and waits up to `job_completion_wait` for
        those in hand; the chunks among them also start no more items and go back to the
        queue with the rest (they would otherwise run whole chunks before stopping).

        Only the first signal counts: under a terminal a worker gets Ctrl-C's SIGINT and
        then batchd-service's SIGTERM. arq starts a drain task per signal and keeps no
        reference to it; a second one, started while `asyncio.run` cancels what is left,
        ends the loop pending ("Task was destroyed but it is pending!")."""
        if self._draining.is_set():
            log.info("worker_signal_ignored", signal=signal.Signals(signum).name)
            return
        self._draining.set()
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        """arq 0.28's `Worker.close`, step for step, but closing the pool with `aclose()`
        (its `close(close_connection_pool=True)` is deprecated in redis-py 5), not failing
        on a job task that ended cancelled, and ending the in-progress clears still
        waiting for Redis before the pool closes (one that outlived it would reconnect a
        connection nobody closes; those keys then expire as arq set them to)."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)  # cancels what still runs, as arq does
        if self._pool is None:
            return
        # Those tasks were just cancelled: one cut short in arq's own bookkeeping ends
        # with CancelledError, which must not stop the close (its job runs again).
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self._clearing.cancel_all()
        for task in (self._listening, self._marking):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._delete_health_check()
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose()
        self._pool = None
