"""The Redis store: named operations over batches, chunks, outcomes and the catalog.

See docs/design.md ("Redis is the system of record") for the key layout, the semantics
of each Lua script, and which other modules reach Redis. `BatchStore` is the server's and
the worker's way into it; behind it, values are encoded by `codec`, uploads staged by
`upload`, listings paged by `listing`, claims and records made by `claims`, expiry,
redrive and deletion by `lifecycle`, atomic updates by `scripts` (core/lua/*.lua).
Redis errors (`redis.exceptions.ConnectionError`, ...) propagate unwrapped: the edge maps
them to UNAVAILABLE.

Times passed in (`now`) are Unix seconds; left out, they are the store's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from batchd.core import census, claims, codec, dispatch, export, lifecycle, listing, throttle
from batchd.core.batch_end import log_batch_end
from batchd.core.claims import RecordResult
from batchd.core.config import DEFAULT_CHUNK_SIZE, DEFAULT_RETENTION, SettingError, Settings
from batchd.core.domain import (
    BatchRecord,
    BatchSpec,
    BatchState,
    ClaimedChunk,
    HandlerSpec,
    HandlerStatus,
    ItemOutcome,
    ItemState,
    ItemView,
)
from batchd.core.errors import AlreadyExists, NotFound
from batchd.core.events import DEFAULT_EVENTS_RETAIN, EventLog
from batchd.core.export import ExportOrder, ExportPage
from batchd.core.jobs import DEFAULT_JOB_EXPIRY
from batchd.core.keys import Keys
from batchd.core.logs import get_logger
from batchd.core.replication import ReplicaAck
from batchd.core.scripts import BatchScope, Scripts
from batchd.core.upload import EarlyUploadSession, Limits, UploadSession, drop_if_owner

__all__ = ["BatchStore", "Limits", "RecordResult", "UploadSession"]

log = get_logger(__name__)

# Worker entries silent for this many TTLs are dropped from the workers zset.
_PRUNE_AFTER_TTLS = 10
# Due scheduled batches start_scheduled reads at once (it loops until none is due).
_SCHEDULED_SLICE = 100
# Jobs move_legacy_jobs takes per script call.
_LEGACY_SLICE = 500
# States in which a batch waits for workers of its handler (to run, or to cancel what a
# dead worker held).
_RUNNABLE = frozenset({BatchState.QUEUED, BatchState.RUNNING, BatchState.CANCELLING})


class BatchStore:
    """Batches, chunks, outcomes and the handler catalog in Redis.

    `staging_ttl`: seconds an upload's staged keys (and its lock) outlive its last
    chunk. `upload_lease`: seconds an upload that starts early holds its batch past its
    last message; a batch whose upload's lease lapsed is cancelled by the maintenance
    sweep. `job_expiry`: seconds a chunk's ARQ job may wait in the queue past its time
    before ARQ drops it (arq's default, a day). `default_chunk_size`: items per chunk
    when the batch options leave it at 0. `retention`: seconds a finished batch is kept
    (Settings.retention; 0 keeps it for ever). `clock`: Unix seconds now (tests pass
    their own). `replica_ack`: the replicas a new batch waits for before its commit
    answers (batchd.core.replication; by default none). `events_retain`: batch events
    each tenant's stream keeps (batchd.core.events; 0: none written); `events` reads them.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        staging_ttl: float = 3600.0,
        job_expiry: float = DEFAULT_JOB_EXPIRY,
        default_chunk_size: int = DEFAULT_CHUNK_SIZE,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        replica_ack: ReplicaAck | None = None,
        events_retain: int = DEFAULT_EVENTS_RETAIN,
        upload_lease: float = 120.0,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.staging_ttl = staging_ttl
        self.upload_lease = upload_lease
        self.job_expiry = job_expiry
        self.default_chunk_size = default_chunk_size
        self.retention = retention
        self.clock = clock
        self.limits = limits or Limits()
        self.replica_ack = replica_ack or ReplicaAck()
        self._scripts = Scripts(redis)
        self._scope = BatchScope(
            self.keys,
            retention_ms=max(0, int(retention * 1000)),
            job_expiry_ms=int(job_expiry * 1000),
            events_retain=max(0, events_retain),
        )
        self.events = EventLog(redis, self.keys, retain=events_retain)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> BatchStore:
        """The store a server or worker process uses: its key prefix, retention, chunk
        size and admission limits from `settings`."""
        try:
            replica_ack = ReplicaAck(
                settings.redis_min_replicas_ack, settings.redis_replica_ack_timeout
            )
        except ValueError as exc:
            raise SettingError(
                f"redis_min_replicas_ack, redis_replica_ack_timeout: {exc}"
            ) from None
        return cls(
            redis,
            Keys(settings.key_prefix),
            default_chunk_size=settings.default_chunk_size,
            retention=settings.retention,
            limits=Limits(
                max_pending_items=settings.max_pending_items,
                max_batch_items=settings.max_batch_items,
                window=settings.dispatch_window,
                tenant_max_pending_items=settings.tenant_max_pending_items,
                tenant_max_open_batches=settings.tenant_max_open_batches,
                tenant_max_items_per_second=settings.tenant_max_items_per_second,
                max_upload_bytes=settings.max_upload_bytes,
                max_staged_bytes=settings.max_staged_bytes,
                tenant_max_staged_bytes=settings.tenant_max_staged_bytes,
            ),
            replica_ack=replica_ack,
            events_retain=settings.events_retain,
            # A server ends an upload idle for upload_idle_timeout: one whose lease lapses
            # at twice that has lost its server.
            upload_lease=2 * settings.upload_idle_timeout,
        )

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- submitting -----------------------------------------------------------------
    async def begin_upload(self, spec: BatchSpec, *, early: int = 0) -> UploadSession:
        """AlreadyExists if spec.batch_id is taken or being uploaded.

        A known request_id starts a session that stages nothing and whose commit
        returns the original batch (the batch id is then not checked). `early`: the
        items the upload announces, to start them as they come (EarlyUploadSession: the
        batch exists from here on, holding that many items); 0: at the commit.
        """
        if spec.request_id:
            original = await self.redis.get(self.keys.request(spec.request_id))
            if original is not None:
                return self._session(spec, token="", replay_of=bytes(original).decode())
        token = secrets.token_hex(16)
        lock = self.keys.upload_lock(spec.batch_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(lock, token, nx=True, px=int(self.staging_ttl * 1000))
                pipe.exists(self.keys.meta(spec.batch_id))
                acquired, exists = await pipe.execute()
        except BaseException:
            # Cut short (cancelled): the lock may be ours already; nobody else can free it.
            with contextlib.suppress(RedisError):
                await asyncio.shield(drop_if_owner(self.redis, lock, token, []))
            raise
        if exists:
            if acquired:
                await self.redis.delete(lock)
            raise AlreadyExists(f"batch {spec.batch_id!r} already exists")
        if not acquired:
            raise AlreadyExists(f"batch {spec.batch_id!r} is being uploaded")
        if not early:
            return self._session(spec, token=token)
        session = EarlyUploadSession(
            early,
            self._scope,
            self.upload_lease,
            log_batch_end,
            **self._session_args(spec, token=token),
        )
        try:
            await session.open()
        except BaseException:
            with contextlib.suppress(RedisError):
                await asyncio.shield(drop_if_owner(self.redis, lock, token, []))
            raise
        return session

    # -- reading --------------------------------------------------------------------
    async def get_batch(self, batch_id: str) -> BatchRecord:
        """NotFound if there is no such batch."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta(batch_id))
            pipe.hgetall(self.keys.running(batch_id))
            pipe.hgetall(self.keys.started(batch_id))
            meta, running, started = await pipe.execute()
        if not meta:
            raise NotFound(f"batch {batch_id!r} not found")
        return codec.decode_meta(batch_id, meta, codec.in_flight(running, started))

    async def list_batches(
        self,
        page_size: int,
        cursor: str,
        states: Sequence[BatchState],
        tenant: str | None = None,
        handler: str = "",
    ) -> tuple[list[BatchRecord], str]:
        """Newest first, of `tenant` (None: of every tenant) and of `handler` if given;
        returns (batches, next cursor or ""). A page may be short when a filter skips
        many batches."""
        index = None if tenant is None else self.keys.tenant_batches(tenant)
        batches, cursor, gone = await listing.list_batches(
            self.redis, self.keys, page_size, cursor, states, index, handler
        )
        await lifecycle.prune_batches(self._scripts, self._scope, gone, index)
        return batches, cursor

    async def list_items(
        self, batch_id: str, page_size: int, cursor: str, states: Sequence[ItemState]
    ) -> tuple[list[ItemView], str]:
        """In submission order; a page may be short when a filter skips many items."""
        return await listing.list_items(self.redis, self.keys, batch_id, page_size, cursor, states)

    def export_results(
        self, batch_id: str, order: ExportOrder, after: str
    ) -> AsyncIterator[ExportPage]:
        """The outcomes of a finished batch, page by page (batchd.core.export): NotFound,
        FailedPrecondition while it is unfinished, InvalidRequest for a bad cursor."""
        return export.export_pages(self.redis, self.keys, self._scripts, batch_id, order, after)

    # -- changing -------------------------------------------------------------------
    async def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Idempotent. NotFound if there is no such batch."""
        reply = await self._scope.run(self._scripts.cancel_batch, batch_id, self._now_ms())
        if reply is None:
            raise NotFound(f"batch {batch_id!r} not found")
        log_batch_end(batch_id, reply[1])
        return await self.get_batch(batch_id)

    async def pause_batch(self, batch_id: str) -> BatchRecord:
        """QUEUED or RUNNING -> PAUSED; idempotent. FailedPrecondition when the batch is
        finished or cancelling; NotFound."""
        await dispatch.pause_batch(self._scripts, self._scope, batch_id, now_ms=self._now_ms())
        return await self.get_batch(batch_id)

    async def resume_batch(self, batch_id: str) -> BatchRecord:
        """PAUSED -> RUNNING (QUEUED if nothing had started); idempotent.
        FailedPrecondition when the batch is finished or cancelling; NotFound."""
        await dispatch.resume_batch(self._scripts, self._scope, batch_id, now_ms=self._now_ms())
        return await self.get_batch(batch_id)

    async def update_options(self, batch_id: str, changes: Mapping[str, Any]) -> BatchRecord:
        """Sets options (priority, max_per_second, burst, max_concurrent) of an unfinished
        batch. FailedPrecondition when it is finished or cancelling; NotFound."""
        await dispatch.update_options(
            self.redis, self._scripts, self._scope, batch_id, changes, now_ms=self._now_ms()
        )
        return await self.get_batch(batch_id)

    async def pending_items(self) -> int:
        """Items not yet terminal across all batches (the admission counter)."""
        return int(await self.redis.get(self.keys.pending) or 0)

    async def retry_items(
        self, batch_id: str, custom_ids: Sequence[str], request_id: str
    ) -> tuple[BatchRecord, int, bool]:
        """Runs FAILED and EXPIRED items again (all of them when `custom_ids` is empty)
        with a fresh attempt budget; returns (batch, requeued, replayed).

        A finished batch runs again (and is kept until it finishes again), with a new
        deadline. A known `request_id` returns what its first call did, replayed.
        InvalidRequest (`custom_ids[i]`) when a listed item is missing or not FAILED or
        EXPIRED, or (`request_id`) when the request_id retried another batch;
        FailedPrecondition while the batch is being cancelled; NotFound.
        """
        batch = await self.get_batch(batch_id)
        _, requeued, replayed = await lifecycle.retry_items(
            self.redis,
            self._scripts,
            self._scope,
            batch_id,
            custom_ids,
            request_id,
            now_ms=self._now_ms(),
            window=batch.options.completion_window,
        )
        return await self.get_batch(batch_id), requeued, replayed

    async def delete_batch(self, batch_id: str) -> None:
        """Deletes a finished batch and everything about it. NotFound; FailedPrecondition
        while the batch is unfinished."""
        await lifecycle.delete_batch(self._scripts, self._scope, batch_id, now_ms=self._now_ms())

    # -- workers --------------------------------------------------------------------
    async def claim_chunk(
        self, batch_id: str, chunk: int, *, lease_ttl: float
    ) -> ClaimedChunk | None:
        """The chunk's runnable items, under a lease of `lease_ttl` seconds (renew it with
        `renew_leases`; present `token` with every record).

        None when there is nothing to run: the chunk is done, cancelled or expired, its
        batch is gone or finished, or it is claimed under a live lease (its holder runs
        every runnable item). A lease that ran out is taken over, with a new token.
        """
        return await self._claim(batch_id, chunk, lease_ttl)

    async def claim_next_chunk(
        self, batch_id: str, *, lease_ttl: float, handlers: Sequence[str]
    ) -> ClaimedChunk | None:
        """Claims the batch's next chunk not yet dispatched, as `claim_chunk` would once
        its job ran, without the job (for a worker that just finished a quick chunk of
        the batch, sparing the job's trip through ARQ). None when another batch has
        jobs in the queue of one of `handlers` (the worker's: they go first, in the
        queues' order), every chunk is dispatched, or the batch is not RUNNING."""
        queues = [self.keys.queue(name) for name in handlers]
        return await self._claim(batch_id, None, lease_ttl, queues)

    async def _claim(
        self, batch_id: str, chunk: int | None, lease_ttl: float, queues: Sequence[str] = ()
    ) -> ClaimedChunk | None:
        return await claims.claim_chunk(
            self._scripts,
            self._scope,
            batch_id,
            chunk,
            token=secrets.token_hex(8),
            now_ms=self._now_ms(),
            lease_ttl=lease_ttl,
            queues=queues,
        )

    async def renew_leases(
        self, claims_held: Sequence[tuple[str, int, str, int]], ttl: float
    ) -> list[BatchState | None]:
        """Extends each (batch_id, chunk, token, items in flight) claim's lease to `ttl`
        seconds from now, and records its items in flight (-1: unchanged), in one round
        trip. Per claim: its batch's state, or None for a claim that was lost (taken over,
        expired, cancelled, deleted): its holder must start no more items."""
        return await claims.renew_leases(
            self._scripts, self._scope, claims_held, now_ms=self._now_ms(), ttl=ttl
        )

    async def record_outcomes(
        self,
        batch_id: str,
        chunk: int,
        outcomes: Sequence[ItemOutcome],
        *,
        token: str,
        release: bool,
        in_flight: int = -1,
    ) -> RecordResult:
        """Records outcomes of the chunk's items: terminal ones (first writer wins, whatever
        the token), or failed attempts to retry (state PENDING with `retry_at`: the item
        waits, and a job is scheduled for it). `release` (only under the claim's own
        token) ends the claim: items it left unrecorded are handed back, to run again.

        ValueError for an outcome neither terminal nor a retry; NotFound if the batch is
        gone; a ResponseError for an item outside the chunk (nothing is recorded).
        `in_flight` (unless negative): the holder's items of the chunk in flight now.
        """
        return await claims.record_outcomes(
            self._scripts,
            self._scope,
            batch_id,
            chunk,
            outcomes,
            token=token,
            release=release,
            in_flight=in_flight,
            now_ms=self._now_ms(),
        )

    # -- flow control (batchd.core.throttle) ----------------------------------------
    async def take_permits(
        self,
        buckets: Sequence[throttle.Bucket],
        want: int,
        *,
        used: int = 0,
        ok: int = 0,
        now: float | None = None,
    ) -> throttle.Grant:
        """Up to `want` start permits from every one of `buckets` at once (consumed now),
        or how long to wait for them; `used`: starts made in the last free period beyond
        what it granted, `ok`: items ended without a slow-down since (both for the
        observed rates). The buckets run on Redis' clock unless `now` is given."""
        return await throttle.take_permits(self._scripts, buckets, want, used, now, ok)

    async def slow_down(
        self,
        bucket: throttle.Bucket,
        *,
        started: float | None = None,
        used: int = 0,
        ok: int = 0,
        retry_after: float | None = None,
        now: float | None = None,
    ) -> tuple[bool, float]:
        """The downstream asked to slow down: cuts the bucket's rate for every worker
        (unless the item that saw it started before the last cut, or the last cut's
        `retry_after` still holds) and starts nothing on it for `retry_after` seconds.
        Returns (cut, rate)."""
        return await throttle.slow_down(self._scripts, bucket, started, now, used, ok, retry_after)

    async def effective_rate(self, batch: BatchRecord, now: float | None = None) -> float:
        """The start rate in force for the batch (items/s): its bucket's current rate,
        below max_per_second while slowed down; 0 when unlimited."""
        buckets = throttle.buckets_for(self.keys, batch.batch_id, batch.options)
        return (await throttle.take_permits(self._scripts, buckets, 0, 0, now)).rate

    async def hold_slots(
        self, batch_id: str, chunk: int, token: str, count: int, *, limit: int
    ) -> tuple[int, BatchState | None]:
        """The holder of claimed chunk (`chunk`, `token`) asks to hold `count` of the
        batch's `limit` (max_concurrent) slots; returns how many it holds now, and the
        batch's state (None: gone). Holdings live only with their chunk's lease."""
        return await throttle.hold_slots(
            self._scripts,
            self._scope,
            batch_id,
            chunk,
            token,
            count,
            limit,
            now_ms=self._now_ms(),
        )

    # -- maintenance ----------------------------------------------------------------
    async def move_legacy_jobs(self) -> int:
        """Moves the chunk jobs an earlier version left in its single queue to their
        handlers' queues; returns how many it took off (a command when there are none)."""
        moved = 0
        while True:
            count = int(
                await self._scripts.move_legacy_jobs(
                    keys=[self.keys.legacy_queue, self.keys.queue_prefix],
                    args=[self.keys.meta(""), _LEGACY_SLICE],
                )
            )
            moved += count
            if count < _LEGACY_SLICE:
                return moved

    async def reap_expired_leases(self, now: float | None = None) -> int:
        """Drops every lease expired at `now` and enqueues a job to take its chunk over;
        returns how many. Safe to run in any number of processes at once."""
        return await claims.reap_expired_leases(
            self._scripts, self._scope, now_ms=self._now_ms(now)
        )

    async def start_scheduled(self, now: float | None = None) -> int:
        """Starts every batch whose start time came by `now`: its first chunk jobs are
        enqueued. Returns how many started. Safe to run in any number of processes at
        once (start_scheduled.lua takes each batch out of the zset atomically)."""
        now_ms = self._now_ms(now)
        started = 0
        while True:
            due = await self.redis.zrangebyscore(
                self.keys.scheduled, "-inf", now_ms, start=0, num=_SCHEDULED_SLICE
            )
            for raw in due:
                started += int(
                    await self._scope.run(
                        self._scripts.start_scheduled,
                        bytes(raw).decode(),
                        now_ms,
                        keys=[self.keys.scheduled],
                        args=[self.limits.window],
                    )
                )
            if len(due) < _SCHEDULED_SLICE:
                return started

    async def end_dead_uploads(self, now: float | None = None) -> int:
        """Cancels every batch whose upload started it early and died (its server gone:
        the upload's lease lapsed by `now`), as the broken stream would have. Returns how
        many. Safe to run in any number of processes at once (end_upload.lua)."""
        now_ms, keys = self._now_ms(now), self.keys
        due = await self.redis.zrangebyscore(keys.uploading, "-inf", now_ms)
        ended = 0
        for raw in due:
            batch_id = bytes(raw).decode()
            done, end = await self._scope.run(
                self._scripts.end_upload,
                batch_id,
                now_ms,
                keys=[keys.upload_lock(batch_id), keys.uploading],
                args=["", ""],
            )
            if done:
                ended += 1
                log.warning("upload_lost", batch_id=batch_id)
                log_batch_end(batch_id, end)
        return ended

    async def expire_batches(self, now: float | None = None) -> int:
        """Ends every unfinished batch whose completion window closed by `now`: its items
        without an outcome become EXPIRED. Returns how many batches expired."""
        return await lifecycle.expire_batches(
            self.redis, self._scripts, self._scope, now_ms=self._now_ms(now)
        )

    async def publish_worker(
        self, worker_id: str, handlers: Sequence[HandlerSpec], ttl: float
    ) -> None:
        """Publish the catalog and refresh the worker's liveness (call every heartbeat)."""
        now, ttl_ms = codec.now_ms(), int(ttl * 1000)
        names = json.dumps(sorted(spec.name for spec in handlers))
        gone = now - _PRUNE_AFTER_TTLS * ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            if handlers:
                entries = {spec.name: codec.encode_handler(spec, now) for spec in handlers}
                pipe.hset(self.keys.handlers, mapping=entries)
            for spec in handlers:
                serving = self.keys.handler_workers(spec.name)
                pipe.zadd(serving, {worker_id: now})
                pipe.zremrangebyscore(serving, "-inf", gone)
            pipe.zadd(self.keys.workers, {worker_id: now})
            pipe.set(self.keys.worker(worker_id), names, px=max(1, ttl_ms))
            pipe.zremrangebyscore(self.keys.workers, "-inf", gone)
            await pipe.execute()

    async def remove_worker(self, worker_id: str) -> None:
        """Takes a stopping worker out at once, from the live counts of the handlers it
        served too, rather than when its heartbeat goes stale."""
        names = await self.redis.get(self.keys.worker(worker_id))
        handlers: list[str] = json.loads(names) if names else []
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.workers, worker_id)
            pipe.delete(self.keys.worker(worker_id))
            for name in handlers:
                pipe.zrem(self.keys.handler_workers(name), worker_id)
            await pipe.execute()

    async def census(self, *, worker_ttl: float, limit: int) -> census.Census:
        """What the server's metrics read from Redis (batchd.core.census): bounded, no
        keyspace scan."""
        return await census.take_census(
            self.redis, self.keys, now_ms=codec.now_ms(), worker_ttl=worker_ttl, limit=limit
        )

    async def live_handlers(self, names: Iterable[str], ttl: float) -> set[str]:
        """Those of `names` that a worker seen within `ttl` seconds serves (a command per
        name, in one round trip)."""
        wanted = sorted(set(names))
        if not wanted:
            return set()
        since = codec.now_ms() - int(ttl * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in wanted:
                pipe.zcount(self.keys.handler_workers(name), since, "+inf")
            counts = await pipe.execute()
        return {name for name, count in zip(wanted, counts, strict=True) if count}

    async def explain_waits(self, batches: Sequence[BatchRecord], ttl: float) -> list[BatchRecord]:
        """`batches`, each unfinished one that no live worker (seen within `ttl` seconds)
        can run with its `waiting_reason` set; a queued batch before its start time
        says so. A paused batch waits for resume: no reason is given beyond its state."""
        open_batches = [b for b in batches if b.state in _RUNNABLE]
        live = await self.live_handlers((b.handler for b in open_batches), ttl)
        now = self.clock()
        return [
            replace(b, waiting_reason=f"scheduled to start at {_iso(b.scheduled_start)}")
            if _before_start(b, now)
            else replace(b, waiting_reason=f'no live worker serves handler "{b.handler}"')
            if b.state in _RUNNABLE and b.handler not in live
            else b
            for b in batches
        ]

    async def get_handler(self, name: str) -> HandlerSpec | None:
        raw = await self.redis.hget(self.keys.handlers, name)  # type: ignore[misc]
        return None if raw is None else codec.decode_handler(raw)[0]

    async def list_handlers(self, ttl: float) -> list[HandlerStatus]:
        """Every published handler with its count of workers seen within `ttl` seconds.

        `last_seen` is the newest heartbeat of any worker that served the handler, live
        or not.
        """
        since = codec.now_ms() - int(ttl * 1000)
        catalog = await self.redis.hgetall(self.keys.handlers)  # type: ignore[misc]
        names = sorted(bytes(name).decode() for name in catalog)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(self.keys.handler_workers(name), since, "+inf")
            served = dict(zip(names, await pipe.execute(), strict=True))
        statuses = []
        for raw in catalog.values():
            spec, seen_ms = codec.decode_handler(raw)
            statuses.append(
                HandlerStatus(
                    spec=spec,
                    live_workers=served.get(spec.name, 0),
                    last_seen=seen_ms / 1000 if seen_ms else None,
                )
            )
        return sorted(statuses, key=lambda status: status.spec.name)

    # -- internals ------------------------------------------------------------------
    def _now_ms(self, now: float | None = None) -> int:
        return round((self.clock() if now is None else now) * 1000)

    def _session(
        self, spec: BatchSpec, *, token: str, replay_of: str | None = None
    ) -> UploadSession:
        return UploadSession(**self._session_args(spec, token=token, replay_of=replay_of))

    def _session_args(
        self, spec: BatchSpec, *, token: str, replay_of: str | None = None
    ) -> dict[str, Any]:
        return {
            "redis": self.redis,
            "keys": self.keys,
            "scripts": self._scripts,
            "spec": spec,
            "chunk_size": max(1, spec.options.chunk_size or self.default_chunk_size),
            "token": token,
            "staging_ttl": self.staging_ttl,
            "job_expiry": self.job_expiry,
            "now_ms": self._now_ms,
            "replay_of": replay_of,
            "limits": self.limits,
            "replica_ack": self.replica_ack,
            "events_retain": self._scope.events_retain,
        }


def _before_start(batch: BatchRecord, now: float) -> bool:
    start = batch.scheduled_start
    return batch.state is BatchState.QUEUED and start is not None and start > now


def _iso(seconds: float | None) -> str:
    """RFC 3339 UTC to the second, as the CLI and docs show times."""
    moment = datetime.fromtimestamp(seconds or 0, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
