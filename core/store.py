"""The Redis store: named operations over batches, chunks, outcomes and the catalog.

See docs/design.md for the key layout and the semantics of each Lua script. Only this
package talks to Redis: values are encoded by `codec`, uploads staged by `upload`,
listings paged by `listing`, atomic updates made by `scripts` (core/lua/*.lua). Redis
errors (`redis.exceptions.ConnectionError`, ...) propagate unwrapped: the edge maps
them to UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from batchd.core import codec, listing
from batchd.core.domain import (
    BatchOptions,
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
from batchd.core.jobs import DEFAULT_JOB_EXPIRY
from batchd.core.keys import Keys
from batchd.core.scripts import Scripts
from batchd.core.upload import UploadSession, drop_if_owner

__all__ = ["BatchStore", "UploadSession"]

# Worker entries silent for this many TTLs are dropped from the workers zset.
_PRUNE_AFTER_TTLS = 10


class BatchStore:
    """Batches, chunks, outcomes and the handler catalog in Redis.

    `staging_ttl`: seconds an upload's staged keys (and its lock) outlive its last
    chunk. `job_expiry`: seconds a chunk's ARQ job may wait in the queue before ARQ
    drops it (arq's default, a day). `default_chunk_size`: items per chunk when the
    batch options leave it at 0.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        staging_ttl: float = 3600.0,
        job_expiry: float = DEFAULT_JOB_EXPIRY,
        default_chunk_size: int = 100,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.staging_ttl = staging_ttl
        self.job_expiry = job_expiry
        self.default_chunk_size = default_chunk_size
        self._scripts = Scripts(redis)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- submitting -----------------------------------------------------------------
    async def begin_upload(self, spec: BatchSpec) -> UploadSession:
        """AlreadyExists if spec.batch_id is taken or being uploaded.

        A known request_id starts a session that stages nothing and whose commit
        returns the original batch (the batch id is then not checked).
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
        return self._session(spec, token=token)

    async def find_request(self, request_id: str) -> BatchRecord | None:
        """The batch a request_id created, if any (lets the edge answer a replay early)."""
        batch_id = await self.redis.get(self.keys.request(request_id))
        if batch_id is None:
            return None
        try:
            return await self.get_batch(bytes(batch_id).decode())
        except NotFound:
            return None

    # -- reading --------------------------------------------------------------------
    async def get_batch(self, batch_id: str) -> BatchRecord:
        """NotFound if there is no such batch."""
        meta = await self.redis.hgetall(self.keys.meta(batch_id))  # type: ignore[misc]
        if not meta:
            raise NotFound(f"batch {batch_id!r} not found")
        return codec.decode_meta(batch_id, meta)

    async def list_batches(
        self, page_size: int, cursor: str, states: Sequence[BatchState]
    ) -> tuple[list[BatchRecord], str]:
        """Newest first; returns (batches, next cursor or ""). A page may be short when a
        state filter skips many batches."""
        return await listing.list_batches(self.redis, self.keys, page_size, cursor, states)

    async def list_items(
        self, batch_id: str, page_size: int, cursor: str, states: Sequence[ItemState]
    ) -> tuple[list[ItemView], str]:
        """In submission order; a page may be short when a filter skips many items."""
        return await listing.list_items(self.redis, self.keys, batch_id, page_size, cursor, states)

    # -- changing -------------------------------------------------------------------
    async def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Idempotent. NotFound if there is no such batch."""
        state = await self._scripts.cancel_batch(
            keys=[self.keys.meta(batch_id), self.keys.chunk_states(batch_id)],
            args=[codec.now_ms()],
        )
        if state is None:
            raise NotFound(f"batch {batch_id!r} not found")
        return await self.get_batch(batch_id)

    # -- workers --------------------------------------------------------------------
    async def claim_chunk(self, batch_id: str, chunk: int) -> ClaimedChunk | None:
        """None when the chunk is done, cancelled or its batch is gone."""
        keys = self.keys
        claimed = await self._scripts.claim_chunk(
            keys=[
                keys.meta(batch_id),
                keys.chunk_states(batch_id),
                keys.chunk(batch_id, chunk),
                keys.outcomes(batch_id, chunk),
            ],
            args=[chunk, codec.now_ms()],
        )
        if claimed is None:
            return None
        raw_items, handler, options, size, recorded = claimed
        first = chunk * int(size)
        done = {int(offset) for offset in recorded}
        return ClaimedChunk(
            batch_id=batch_id,
            chunk=chunk,
            handler=bytes(handler).decode(),
            options=BatchOptions.from_dict(json.loads(options)),
            first_index=first,
            items=[
                (first + offset, custom_id, params)
                for offset, (custom_id, params) in enumerate(codec.decode_chunk(raw_items))
                if offset not in done
            ],
        )

    async def record_outcomes(
        self, batch_id: str, chunk: int, outcomes: Sequence[ItemOutcome], *, release: bool
    ) -> BatchState:
        """First writer wins per item; returns the batch state after the write.

        Outcomes must be terminal and belong to `chunk`; NotFound if the batch is gone.
        """
        args: list[int | bytes] = [chunk, codec.now_ms(), int(release)]
        for outcome in outcomes:
            if not outcome.state.is_terminal:
                raise ValueError(f"outcome of item {outcome.index} is not terminal")
            args += [outcome.index, int(outcome.state), codec.encode_outcome(outcome)]
        state = await self._scripts.record_outcomes(
            keys=[
                self.keys.meta(batch_id),
                self.keys.chunk_states(batch_id),
                self.keys.outcomes(batch_id, chunk),
                self.keys.failed(batch_id),
            ],
            args=args,
        )
        if state is None:
            raise NotFound(f"batch {batch_id!r} not found")
        return BatchState(int(state))

    async def publish_worker(
        self, worker_id: str, handlers: Sequence[HandlerSpec], ttl: float
    ) -> None:
        """Publish the catalog and refresh the worker's liveness (call every heartbeat)."""
        now, ttl_ms = codec.now_ms(), int(ttl * 1000)
        names = json.dumps(sorted(spec.name for spec in handlers))
        async with self.redis.pipeline(transaction=True) as pipe:
            if handlers:
                entries = {spec.name: codec.encode_handler(spec, now) for spec in handlers}
                pipe.hset(self.keys.handlers, mapping=entries)
            pipe.zadd(self.keys.workers, {worker_id: now})
            pipe.set(self.keys.worker(worker_id), names, px=max(1, ttl_ms))
            pipe.zremrangebyscore(self.keys.workers, "-inf", now - _PRUNE_AFTER_TTLS * ttl_ms)
            await pipe.execute()

    async def remove_worker(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.workers, worker_id)
            pipe.delete(self.keys.worker(worker_id))
            await pipe.execute()

    async def get_handler(self, name: str) -> HandlerSpec | None:
        raw = await self.redis.hget(self.keys.handlers, name)  # type: ignore[misc]
        return None if raw is None else codec.decode_handler(raw)[0]

    async def list_handlers(self, ttl: float) -> list[HandlerStatus]:
        """Every published handler with its count of workers seen within `ttl` seconds.

        `last_seen` is the newest heartbeat of any worker that served the handler, live
        or not.
        """
        since = codec.now_ms() - int(ttl * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.handlers)
            pipe.zrangebyscore(self.keys.workers, since, "+inf")
            catalog, live = await pipe.execute()
        served: dict[str, int] = {}
        if live:
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_id in live:
                    pipe.get(self.keys.worker(bytes(worker_id).decode()))
                for names in await pipe.execute():
                    for name in json.loads(names) if names else []:
                        served[name] = served.get(name, 0) + 1
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
    def _session(
        self, spec: BatchSpec, *, token: str, replay_of: str | None = None
    ) -> UploadSession:
        return UploadSession(
            self.redis,
            self.keys,
            self._scripts,
            spec,
            chunk_size=max(1, spec.options.chunk_size or self.default_chunk_size),
            token=token,
            staging_ttl=self.staging_ttl,
            job_expiry=self.job_expiry,
            replay_of=replay_of,
        )
