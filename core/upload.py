"""The upload session: stages a batch chunk by chunk, then commits it in one transaction.

See docs/design.md, "Writing a batch". Staged keys live under the batch's upload lock
and expire with it, so an upload that dies leaves nothing for long; `abort` deletes
them at once. At most one chunk is buffered in memory beyond the items of the call
under way.

The request digest is a SHA-256 over the canonical JSON of
`{"handler", "options" (as given, defaults merged), "metadata"}`, then, per item in
order, the JSON array `[custom_id, params]` (params being the item's JSON bytes). The
batch id is not part of it: a retried request whose batch id the server chose anew is
still a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from batchd.core import codec
from batchd.core.domain import BatchRecord, BatchSpec, BatchState, NewItem, tenant_of
from batchd.core.errors import (
    AlreadyExists,
    Exhausted,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
)
from batchd.core.events import DEFAULT_EVENTS_RETAIN, append_created
from batchd.core.jobs import dispatched_job
from batchd.core.keys import Keys
from batchd.core.replication import ReplicaAck, confirm_replicated
from batchd.core.scripts import BatchScope, Scripts

_COMMIT_ATTEMPTS = 5
# RetryInfo of an upload refused for the system-wide pending limit: workers need a while
# to bring the backlog down.
ADMISSION_RETRY_AFTER = 30.0
# Bytes of Redis a staged item takes beyond its params and twice its custom_id (once in
# its chunk, once in the batch's ids hash): the hash entry, the msgpack framing. A bound
# of what was measured (docs/performance.md, "Uploads that never commit").
STAGED_ITEM_OVERHEAD = 50


def staged_bytes(item: NewItem) -> int:
    """What staging `item` costs Redis, as the upload byte limits count it."""
    return len(item.params_json) + 2 * len(item.custom_id.encode()) + STAGED_ITEM_OVERHEAD


@dataclass(frozen=True)
class Limits:
    """Admission limits: items not yet terminal across all batches, items per batch;
    per tenant (0: none), its items not yet terminal, its unfinished batches and the
    items it submits per second (a bucket of `tenant_submit_burst` seconds' worth);
    `window`: chunk jobs of a batch enqueued at commit (the rest follow its claims).
    Bytes staged and not yet committed (`staged_bytes`; 0: no limit): by one upload, by
    all uploads, by one tenant's."""

    max_pending_items: int = 50_000_000
    max_batch_items: int = 10_000_000
    window: int = 16
    tenant_max_pending_items: int = 0
    tenant_max_open_batches: int = 0
    tenant_max_items_per_second: float = 0.0
    tenant_submit_burst: float = 10.0
    max_upload_bytes: int = 512 * 1024 * 1024
    max_staged_bytes: int = 2 * 1024 * 1024 * 1024
    tenant_max_staged_bytes: int = 0


_SLICE = 1000  # keys per DEL / PEXPIRE command


def _spec_digest(spec: BatchSpec) -> hashlib._Hash:
    header = {
        "handler": spec.handler,
        "options": spec.options.to_dict(),
        "metadata": dict(spec.metadata),
    }
    return hashlib.sha256(codec.canonical_json(header))


def _slices(keys: list[str]) -> list[list[str]]:
    return [keys[i : i + _SLICE] for i in range(0, len(keys), _SLICE)]


async def drop_if_owner(redis: Redis, lock: str, token: str, keys: list[str]) -> None:
    """Delete `keys` and the upload lock, if the lock still holds `token`.

    A lock that expired and was taken again belongs to another upload, and so do the
    keys staged under it: they are left alone.
    """
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(lock)
            if await pipe.get(lock) != token.encode():
                return
            pipe.multi()
            for part in _slices(keys):
                pipe.delete(*part)
            pipe.delete(lock)
            await pipe.execute()
        except WatchError:
            pass  # the lock changed hands meanwhile: nothing here is ours


class UploadSession:
    """Stages one batch's chunks, then commits it atomically (or aborts, leaving nothing).

    Made by `BatchStore.begin_upload`. When the spec's request_id is already known the
    session stages nothing: it only digests the items, and `commit` returns the original
    batch (or rejects a different body).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        spec: BatchSpec,
        *,
        chunk_size: int,
        token: str,
        staging_ttl: float,
        job_expiry: float,
        now_ms: Callable[[], int] = codec.now_ms,
        replay_of: str | None = None,
        limits: Limits | None = None,
        replica_ack: ReplicaAck | None = None,
        events_retain: int = DEFAULT_EVENTS_RETAIN,
    ) -> None:
        self.spec = spec
        self.chunk_size = chunk_size
        self._redis = redis
        self._keys = keys
        self._scripts = scripts
        self._token = token
        self._ttl_ms = int(staging_ttl * 1000)
        self._job_expiry = job_expiry
        self._now_ms = now_ms
        self._replay_of = replay_of
        self._limits = limits or Limits()
        self._replica_ack = replica_ack or ReplicaAck()
        self._events_retain = events_retain
        self._digest = _spec_digest(spec)
        self._buffer: list[NewItem] = []
        self._count = 0
        self._bytes = 0  # staged_bytes() of the items taken so far
        self._staged = 0  # chunks staged so far
        # This upload in the staging index (its items count toward admission).
        self._member = f"{spec.tenant} {spec.batch_id}"
        self._refreshed = time.monotonic()
        self._closed = False

    @property
    def item_count(self) -> int:
        return self._count

    @property
    def byte_count(self) -> int:
        """The items' bytes so far, as `staged_bytes` counts them."""
        return self._bytes

    @property
    def items_apart(self) -> int:
        """How many of a message's next items to add apart from the rest, because their
        chunk would then start work sooner: 0 here, where nothing runs before the commit."""
        return 0

    async def add_items(self, items: Iterable[NewItem]) -> None:
        """Buffer items; stage every full chunk, all of one call's in one round trip.
        InvalidRequest on a duplicate custom_id (field `items[<global index>].custom_id`),
        after which the session is aborted."""
        self._check_open()
        full = await self._fill(items)
        if full:
            await self._stage(full)

    async def _fill(self, items: Iterable[NewItem]) -> list[list[NewItem]]:
        """Digests and counts `items` and buffers them into chunks; returns the chunks
        they filled. The refusal of an item past a limit (`_refusal`) is raised after
        aborting the session."""
        full: list[list[NewItem]] = []
        for item in items:
            self._digest.update(_digest_entry(item))
            self._count += 1
            if self._replay_of is not None:
                continue
            self._bytes += staged_bytes(item)
            refusal = self._refusal()
            if refusal is not None:
                await self.abort()
                raise refusal
            self._buffer.append(item)
            if len(self._buffer) >= self.chunk_size:
                full.append(self._buffer)
                self._buffer = []
        return full

    def _refusal(self) -> Exception | None:
        """Why the item just taken may not be: the batch's or the upload's limit."""
        if self._count > self._limits.max_batch_items:
            return self._over_batch_limit()
        if self._bytes > self._limits.max_upload_bytes > 0:
            return self._over_upload_bytes()
        return None

    async def commit(self) -> tuple[BatchRecord, bool]:
        """Make the batch visible and runnable; returns (batch, replayed).

        InvalidRequest when the batch holds no items, or when the request_id was used
        with another body; AlreadyExists when the batch id was taken meanwhile.
        FailedPrecondition when the upload outlived its staging TTL. Unavailable when
        fewer replicas than `replica_ack` asks for acknowledged the batch (committed, or
        replayed) in time: it stands, and a retry with its request_id asks again.
        """
        self._check_open()
        if self._buffer:
            last, self._buffer = self._buffer, []
            await self._stage([last])
        if self._replay_of is None and self._count > 0:
            await self._admit(0)
        if self._count == 0:
            await self.abort()
            raise InvalidRequest.for_field("items", "a batch needs at least one item")
        if self._replay_of is not None:
            self._closed = True
            return await self._replicated(await self._replay(self._replay_of))
        for _ in range(_COMMIT_ATTEMPTS):
            try:
                original = await self._try_commit()
            except WatchError:
                continue  # the request key or the lock changed: look again
            if original is not None:
                await self.abort()
                return await self._replicated(await self._replay(original))
            self._closed = True
            return await self._replicated((await self._read_batch(self.spec.batch_id), False))
        await self.abort()
        raise WatchError(f"commit of batch {self.spec.batch_id!r} kept conflicting")

    async def abort(self) -> None:
        """Delete everything staged so far and release the batch id. Idempotent.

        Shielded: when the caller is cancelled (a client gone mid-stream) the clean-up
        still runs to its end.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._replay_of is not None:
            return
        # One shield over both steps: a second cancellation while the first runs must not
        # skip the second, or the upload's items would count toward admission until the
        # staging TTL.
        await asyncio.shield(self._drop())

    async def _drop(self) -> None:
        staged = [self._keys.chunk(self.spec.batch_id, n) for n in range(self._staged)]
        staged.append(self._keys.ids(self.spec.batch_id))
        lock = self._keys.upload_lock(self.spec.batch_id)
        await drop_if_owner(self._redis, lock, self._token, staged)
        await self._unlist()

    async def _unlist(self) -> None:
        """Takes this upload out of the staging index (its items and bytes no longer
        count)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.staging, self._member)
            pipe.hdel(self._keys.staging_items, self._member)
            pipe.hdel(self._keys.staging_bytes, self._member)
            await pipe.execute()

    # -- internals ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"the upload of batch {self.spec.batch_id!r} is over")

    async def _stage(self, chunks: list[list[NewItem]]) -> None:
        """Stages `chunks` (full ones, but for an upload's last) in one pipeline: each
        chunk's script checks its ids against those staged before it, in order."""
        batch_id, first_chunk = self.spec.batch_id, self._staged
        others_staged = await self._list_staged()
        # Counted before the call: a call cut short may still have staged the chunks,
        # and abort must then delete them too.
        self._staged = first_chunk + len(chunks)
        firsts = [(first_chunk + n) * self.chunk_size for n in range(len(chunks))]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for n, (chunk, first) in enumerate(zip(chunks, firsts, strict=True)):
                    await self._scripts.stage_chunk(
                        keys=[
                            self._keys.upload_lock(batch_id),
                            self._keys.ids(batch_id),
                            self._keys.chunk(batch_id, first_chunk + n),
                        ],
                        args=[
                            self._token,
                            self._ttl_ms,
                            codec.encode_chunk(chunk),
                            first,
                            codec.encode_ids([item.custom_id for item in chunk]),
                        ],
                        client=pipe,
                    )
                results = await pipe.execute()
        except BaseException:
            with contextlib.suppress(RedisError):  # the first error is the one to report
                await self.abort()
            raise
        for chunk, first, result in zip(chunks, firsts, results, strict=True):
            if result == -1:
                await self.abort()
                raise FailedPrecondition(f"the upload of batch {batch_id!r} expired")
            if isinstance(result, list):
                position, previous = int(result[0]), int(result[1])
                custom_id = chunk[position].custom_id
                await self.abort()
                raise InvalidRequest.for_field(
                    f"items[{first + position}].custom_id",
                    f"custom_id {custom_id!r} is already used by items[{previous}]",
                )
        await self._admit(sum(map(len, chunks)), others_staged)
        await self._refresh_ttls()

    async def _list_staged(self) -> tuple[int, int]:
        """Files this upload in the staging index with its items and bytes once the
        chunks being staged are, until its staging TTL: an upload never committed (a
        server gone mid-stream) stops counting then; returns the items the other uploads
        have staged (all, this tenant's), as `_others_staged` does. Exhausted (after
        aborting: nothing stays) when the bytes all uploads, or its tenant's, have
        staged would pass their limit."""
        keys, limits, tenant, now = self._keys, self._limits, self.spec.tenant, self._now_ms()
        result = await self._scripts.list_staged(
            keys=[keys.staging, keys.staging_items, keys.staging_bytes],
            args=[
                self._member,
                f"{tenant} ",
                self._count,
                self._bytes,
                now,
                now + self._ttl_ms,
                max(limits.max_staged_bytes, 0),
                max(limits.tenant_max_staged_bytes, 0),
            ],
        )
        refused = int(result[0])
        if not refused:
            return int(result[1]), int(result[2])
        others = int(result[1])
        await self.abort()
        if refused == 1:
            limit = limits.max_staged_bytes
            raise Exhausted(
                f"uploads not yet committed have staged {others} bytes, and this one would "
                f"hold {self._bytes} (limit {limit})",
                ADMISSION_RETRY_AFTER,
                quota_subject="max_staged_bytes",
                quota_description=f"bytes staged by uploads not yet committed: at most {limit}",
            )
        limit = limits.tenant_max_staged_bytes
        raise Exhausted(
            f"tenant {tenant!r} has {others} bytes staged by uploads not yet committed, and "
            f"this one would hold {self._bytes} (limit {limit})",
            ADMISSION_RETRY_AFTER,
            quota_subject=f"tenant:{tenant}:max_staged_bytes",
            quota_description=(
                f"bytes staged by the tenant's uploads not yet committed: at most {limit}"
            ),
        )

    async def _others_staged(self) -> tuple[int, int]:
        """Items staged by other uploads not yet committed: (all, this tenant's)."""
        keys, now = self._keys, self._now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.staging, "-inf", now)
            pipe.zrangebyscore(keys.staging, now, "+inf")
            expired, live = await pipe.execute()
        if expired:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.staging, *expired)
                pipe.hdel(keys.staging_items, *expired)
                pipe.hdel(keys.staging_bytes, *expired)
                await pipe.execute()
        others = [m for m in live if bytes(m).decode() != self._member]
        if not others:
            return 0, 0
        counts = await self._redis.hmget(keys.staging_items, others)  # type: ignore[misc]
        tenant = f"{self.spec.tenant} ".encode()
        every = mine = 0
        for member, count in zip(others, counts, strict=True):
            items = int(count or 0)
            every += items
            if bytes(member).startswith(tenant):
                mine += items
        return every, mine

    async def _admit(
        self, staged: int, others_staged: tuple[int, int] | None = None, count: int | None = None
    ) -> None:
        """Exhausted (after aborting: nothing stays) when this batch would take the items
        not yet terminal across all batches beyond max_pending_items, or its tenant past
        a quota: its items not yet terminal, its unfinished batches, or (for the `staged`
        items just staged) its submitted items per second. `others_staged`: the items
        other uploads have staged (all, this tenant's), when the caller has just read
        them in the same script that filed this upload; else they are read here. `count`:
        the batch's items (default: those taken so far)."""
        keys, limits, tenant = self._keys, self._limits, self.spec.tenant
        count = self._count if count is None else count
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.pending)
            pipe.get(keys.tenant_pending(tenant))
            pipe.get(keys.tenant_open(tenant))
            pending, tenant_pending, tenant_open = (int(v or 0) for v in await pipe.execute())
        # Items other uploads have staged but not committed count too: uploads that never
        # end may not take Redis past the limits either.
        staged_every, staged_tenant = others_staged or await self._others_staged()
        pending += staged_every
        tenant_pending += staged_tenant
        refusal: Exhausted | None = None
        limit = limits.max_pending_items
        if pending + count > limit:
            refusal = Exhausted(
                f"too many items pending: {pending} across all batches, and this batch "
                f"would add {count} (limit {limit})",
                ADMISSION_RETRY_AFTER,
                quota_subject="max_pending_items",
                quota_description=f"items not yet finished across all batches: at most {limit}",
            )
        elif 0 < limits.tenant_max_pending_items < tenant_pending + count:
            limit = limits.tenant_max_pending_items
            refusal = Exhausted(
                f"tenant {tenant!r} has {tenant_pending} items pending, and this batch "
                f"would add {count} (limit {limit})",
                ADMISSION_RETRY_AFTER,
                quota_subject=f"tenant:{tenant}:max_pending_items",
                quota_description=f"the tenant's items not yet finished: at most {limit}",
            )
        elif 0 < limits.tenant_max_open_batches <= tenant_open:
            limit = limits.tenant_max_open_batches
            refusal = Exhausted(
                f"tenant {tenant!r} has {tenant_open} unfinished batches (limit {limit})",
                ADMISSION_RETRY_AFTER,
                quota_subject=f"tenant:{tenant}:max_open_batches",
                quota_description=f"the tenant's unfinished batches: at most {limit}",
            )
        elif limits.tenant_max_items_per_second > 0 and staged:
            rate = limits.tenant_max_items_per_second
            wait_ms = int(
                await self._scripts.take_submits(
                    keys=[keys.tenant_submits(tenant)],
                    args=[rate, rate * limits.tenant_submit_burst, staged, self._now_ms()],
                )
            )
            if wait_ms:
                refusal = Exhausted(
                    f"tenant {tenant!r} submits more than {rate:g} items per second",
                    wait_ms / 1000,
                    quota_subject=f"tenant:{tenant}:max_items_per_second",
                    quota_description=f"the tenant's submitted items: at most {rate:g} a second",
                )
        if refusal is not None:
            await self.abort()
            raise refusal

    def _over_upload_bytes(self) -> Exhausted:
        limit = self._limits.max_upload_bytes
        return Exhausted(
            f"an upload stages at most {limit} bytes before it commits (each item's params, "
            f"twice its custom_id and {STAGED_ITEM_OVERHEAD})",
            ADMISSION_RETRY_AFTER,
            quota_subject="max_upload_bytes",
            quota_description=f"bytes one upload may stage: at most {limit}",
        )

    def _over_batch_limit(self) -> Exhausted:
        limit = self._limits.max_batch_items
        return Exhausted(
            f"a batch holds at most {limit} items",
            ADMISSION_RETRY_AFTER,
            quota_subject="max_batch_items",
            quota_description=f"items per batch: at most {limit}",
        )

    async def _refresh_ttls(self) -> None:
        """Keep early chunks alive through a long upload: the script refreshes the lock
        and ids with every chunk; the chunk keys get theirs every third of the TTL."""
        if time.monotonic() - self._refreshed < self._ttl_ms / 3000:
            return
        self._refreshed = time.monotonic()
        staged = [self._keys.chunk(self.spec.batch_id, n) for n in range(self._staged)]
        for keys in _slices(staged):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

    async def _try_commit(self, early: int = 0, lease_ms: int = 0) -> str | None:
        """One WATCH/MULTI/EXEC; returns the original batch id if the request_id is known.

        `early`: the items an upload that starts early announced: the batch is written
        holding them all, with no chunk yet (append_chunk.lua brings each), its lock kept
        for `lease_ms` and its dispatch window owed (meta `owed`) rather than enqueued."""
        spec, keys = self.spec, self._keys
        lock = keys.upload_lock(spec.batch_id)
        request = keys.request(spec.request_id) if spec.request_id else None
        staged = [keys.chunk(spec.batch_id, n) for n in range(self._staged)]
        total = early or self._count
        chunks = -(-early // self.chunk_size) if early else self._staged
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(lock, *([request] if request else []))
            if request and (original := await pipe.get(request)) is not None:
                return bytes(original).decode()
            if await pipe.exists(keys.meta(spec.batch_id)):
                self._closed = True  # the staged keys may be the new owner's: keep them
                raise AlreadyExists(f"batch {spec.batch_id!r} already exists")
            owned = await pipe.get(lock) == self._token.encode()
            if not owned or (staged and await pipe.exists(*staged) != len(staged)):
                await pipe.reset()
                await self.abort()
                raise FailedPrecondition(f"the upload of batch {spec.batch_id!r} expired")

            created = self._now_ms()
            start = None if spec.start_at is None else round(spec.start_at * 1000)
            scheduled = start is not None and start > created
            # A scheduled batch dispatches nothing now: the maintenance sweep enqueues its
            # first window at its start time (start_scheduled.lua).
            window = 0 if scheduled else min(max(self._limits.window, 1), chunks)
            owed, window = (window, 0) if early else (0, window)
            # The window's jobs take their times from the tenant's dispatch clock (fair
            # shares across tenants: docs/design.md, "Priority and fairness").
            first_at = 0
            if window:
                first_at = int(
                    await self._scripts.tenant_time(
                        keys=[keys.tenant_clock, keys.queue(spec.handler)],
                        args=[spec.tenant, window, created, spec.options.priority],
                    )
                )
            options = replace(spec.options, chunk_size=self.chunk_size)
            window_ms = round(spec.options.completion_window * 1000)
            begins = start if scheduled and start is not None else created
            deadline = begins + window_ms if window_ms > 0 else None
            meta = codec.encode_meta(
                handler=spec.handler,
                options=options,
                metadata=spec.metadata,
                request_id=spec.request_id,
                digest="" if early else self._digest.hexdigest(),
                total=total,
                chunks=chunks,
                chunk_size=self.chunk_size,
                created_ms=created,
                deadline_ms=deadline,
                tenant=spec.tenant,
                trace_parent=spec.trace_parent,
                scheduled_ms=start if scheduled else None,
            )
            meta.update(cursor=window, prio=options.priority, acct=0)
            if early:
                meta.update(up=0, owed=owed, uploader=self._token)
            pipe.multi()
            pipe.hset(keys.meta(spec.batch_id), mapping=meta)
            pipe.zadd(keys.batches, {spec.batch_id: created})
            pipe.zadd(keys.tenant_batches(spec.tenant), {spec.batch_id: created})
            # Every open batch is filed, one with no window at +inf (never due): the
            # index of open batches the metrics read (batchd.core.census).
            pipe.zadd(keys.deadlines, {spec.batch_id: math.inf if deadline is None else deadline})
            if scheduled:
                pipe.zadd(keys.scheduled, {spec.batch_id: begins})
            if request:
                pipe.set(request, spec.batch_id)
            if early:
                pipe.pexpire(lock, lease_ms)
                pipe.zadd(keys.uploading, {spec.batch_id: created + lease_ms})
            else:
                for key in [*staged, keys.ids(spec.batch_id)]:
                    pipe.persist(key)
                pipe.delete(lock)
                pipe.zrem(keys.staging, self._member)  # its items now count as pending
                pipe.hdel(keys.staging_items, self._member)
                pipe.hdel(keys.staging_bytes, self._member)
            pipe.incrby(keys.pending, total)
            pipe.incrby(keys.tenant_pending(spec.tenant), total)
            pipe.incr(keys.tenant_open(spec.tenant))
            append_created(
                pipe,
                keys,
                tenant_of(spec.batch_id),
                self._events_retain,
                {**meta, "batch": spec.batch_id},
            )
            # The first `window` chunks get an ARQ job (as ArqRedis.enqueue_job would write
            # it), scored by priority; each claim of a fresh chunk enqueues the next.
            queued: dict[str, int] = {}
            for n in range(window):
                job = dispatched_job(
                    keys.chunk_job_id(spec.batch_id, n),
                    spec.batch_id,
                    n,
                    now_ms=created,
                    at_ms=first_at + n,
                    priority=options.priority,
                    expiry=self._job_expiry,
                )
                pipe.set(job.key, job.payload, px=job.expires_ms)
                queued[job.job_id] = job.score_ms
            if queued:
                pipe.zadd(keys.queue(spec.handler), queued)
                pipe.publish(keys.wake, keys.queue(spec.handler))
            await pipe.execute()
        return None

    async def _replicated(self, result: tuple[BatchRecord, bool]) -> tuple[BatchRecord, bool]:
        """`result` once the replicas `replica_ack` asks for hold its batch."""
        await confirm_replicated(self._redis, self._keys, result[0].batch_id, self._replica_ack)
        return result

    async def _read_batch(self, batch_id: str) -> BatchRecord:
        record, _ = await self._read_meta(batch_id)
        return record

    async def _read_meta(self, batch_id: str) -> tuple[BatchRecord, bytes]:
        meta = await self._redis.hgetall(self._keys.meta(batch_id))  # type: ignore[misc]
        if not meta:
            raise NotFound(f"batch {batch_id!r} not found")
        return codec.decode_meta(batch_id, meta), meta.get(b"digest", b"")

    async def _replay(self, batch_id: str) -> tuple[BatchRecord, bool]:
        record, digest = await self._read_meta(batch_id)
        if record.uploading:
            raise FailedPrecondition(
                f"the request_id's batch {batch_id!r} is still being uploaded: retry once "
                "its upload ends"
            )
        if digest.decode() != self._digest.hexdigest():
            raise InvalidRequest.for_field(
                "request_id",
                f"already used by batch {batch_id!r} with a different request body",
            )
        return record, True


class EarlyUploadSession(UploadSession):
    """An upload whose items start as they come (UploadBatchHeader.start_early).

    Made by `BatchStore.begin_upload`. `open` writes the batch at once, holding the
    `announced` items (admitted all at once) and no chunk yet; each full chunk is then
    appended to it for good and runs from there (append_chunk.lua); `commit` appends the
    last one and ends the upload, keeping the digest for replays. `abort` cannot take
    back what ran: the batch keeps the chunks that came (its total drops to their items),
    is cancelled (those not yet run end CANCELLED) and its request_id is freed
    (end_upload.lua). The upload holds its batch for `lease` seconds past
    its latest call; the maintenance sweep cancels a batch whose upload's lease lapsed
    (its server gone: BatchStore.end_dead_uploads).
    """

    def __init__(
        self,
        announced: int,
        scope: BatchScope,
        lease: float,
        on_end: Callable[[str, Any], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.announced = announced
        self._scope = scope
        self._on_end = on_end  # (batch id, the end a script gave it): batch_end's logger
        self._lease_ms = max(int(lease * 1000), 1)
        self._opened = False

    async def open(self) -> None:
        """Writes the batch, QUEUED. Exhausted past an admission limit; AlreadyExists
        when its id was taken meanwhile; FailedPrecondition when another upload took its
        request_id meanwhile. Nothing stays after a refusal."""
        if self.announced > self._limits.max_batch_items:
            await self.abort()
            raise self._over_batch_limit()
        await self._admit(self.announced, count=self.announced)
        for _ in range(_COMMIT_ATTEMPTS):
            try:
                original = await self._try_commit(self.announced, self._lease_ms)
            except WatchError:
                continue
            if original is not None:
                await self.abort()
                raise FailedPrecondition(
                    f"the request_id was taken meanwhile, by batch {original!r}: retry"
                )
            self._opened = True
            self._refreshed = time.monotonic()
            return
        await self.abort()
        raise WatchError(f"creating batch {self.spec.batch_id!r} kept conflicting")

    @property
    def items_apart(self) -> int:
        """Until the first chunk is appended, the items that complete it: it runs as soon
        as it is checked, rather than once its whole message is."""
        return self.chunk_size - len(self._buffer) if self._staged == 0 else 0

    async def add_items(self, items: Iterable[NewItem]) -> None:
        """Appends every full chunk, all of one call's in one round trip. InvalidRequest
        past the announced count or on a duplicate custom_id; FailedPrecondition when the
        batch stopped taking items (cancelled, expired) or the upload lost its lease."""
        self._check_open()
        full = await self._fill(items)
        if full:
            await self._append(full)
        else:
            await self._renew()

    def _refusal(self) -> Exception | None:
        """An item past those announced (the batch's limit was checked by `open`; the
        items are not staged, so no upload byte limit applies)."""
        if self._count > self.announced:
            return InvalidRequest.for_field(
                f"items[{self._count - 1}]",
                f"the header announced {self.announced} items (item_count)",
            )
        return None

    async def commit(self) -> tuple[BatchRecord, bool]:
        """Appends the last chunk and ends the upload; returns (batch, False).
        InvalidRequest when the stream carried fewer items than announced."""
        self._check_open()
        # Checked first: a batch cut short keeps its full chunks only (truncate_upload).
        if self._count != self.announced:
            raise InvalidRequest.for_field(
                "item_count",
                f"the header announced {self.announced} items; the stream carried {self._count}",
            )
        if self._buffer:
            last, self._buffer = self._buffer, []
            await self._append([last])
        ended, _ = await self._end(self._digest.hexdigest())
        if not ended:
            raise self._lost()
        self._closed = True
        return await self._replicated((await self._read_batch(self.spec.batch_id), False))

    async def abort(self) -> None:
        """Before `open`: as UploadSession.abort. After: cancels the batch and frees its
        request_id, if the upload still holds it. Idempotent; shielded."""
        if not self._opened:
            await super().abort()
            return
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        _, ended = await asyncio.shield(self._end(""))
        self._on_end(self.spec.batch_id, ended)

    async def _end(self, digest: str) -> tuple[bool, Any]:
        keys, batch_id = self._keys, self.spec.batch_id
        ended, end = await self._scope.run(
            self._scripts.end_upload,
            batch_id,
            self._now_ms(),
            keys=[keys.upload_lock(batch_id), keys.uploading],
            args=[self._token, digest],
        )
        return bool(ended), end

    async def _append(self, chunks: list[list[NewItem]]) -> None:
        keys, batch_id, size = self._keys, self.spec.batch_id, self.chunk_size
        now, first_chunk = self._now_ms(), self._staged
        async with self._redis.pipeline(transaction=False) as pipe:
            for k, chunk in enumerate(chunks):
                n = first_chunk + k
                await self._scope.run(
                    self._scripts.append_chunk,
                    batch_id,
                    now,
                    keys=[keys.upload_lock(batch_id), keys.uploading],
                    args=[
                        self._token,
                        self._lease_ms,
                        n,
                        codec.encode_chunk(chunk),
                        codec.encode_ids([item.custom_id for item in chunk]),
                        n * size,
                        keys.wake,
                    ],
                    client=pipe,
                )
            results = await pipe.execute()
        self._refreshed = time.monotonic()
        for k, (chunk, result) in enumerate(zip(chunks, results, strict=True)):
            n = first_chunk + k
            if result == 0:
                self._staged = n + 1
                continue
            if result == -1:
                raise self._lost()
            position, other = int(result[0]), int(result[1])
            if position == -2:
                state = BatchState(other).name
                raise FailedPrecondition(f"batch {batch_id!r} is {state} and takes no more items")
            raise InvalidRequest.for_field(
                f"items[{n * size + position}].custom_id",
                f"custom_id {chunk[position].custom_id!r} is already used by items[{other}]",
            )

    async def _renew(self) -> None:
        """Holds the batch another lease, once a third of it has gone by."""
        if time.monotonic() - self._refreshed < self._lease_ms / 3000:
            return
        self._refreshed = time.monotonic()
        keys, batch_id = self._keys, self.spec.batch_id
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(keys.upload_lock(batch_id), self._lease_ms)
            pipe.zadd(keys.uploading, {batch_id: self._now_ms() + self._lease_ms}, xx=True)
            await pipe.execute()

    def _lost(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"the upload of batch {self.spec.batch_id!r} lost its hold on the batch (idle "
            "past its lease): the maintenance sweep cancels it"
        )


def _digest_entry(item: NewItem) -> bytes:
    """`[<custom_id as JSON>,<params_json>]`: what the request digest takes of an item."""
    return b"[" + codec.canonical_json(item.custom_id) + b"," + item.params_json + b"]"
