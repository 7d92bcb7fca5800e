"""The one module that talks to Redis: named operations over batches, chunks and outcomes.

See docs/design.md for the key layout and the semantics of each Lua script. Values are
encoded by `batchd.core.codec`; uploads are staged by `batchd.core.upload`. Redis
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

from batchd.core import codec
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
from batchd.core.errors import AlreadyExists, InvalidRequest, NotFound
from batchd.core.jobs import DEFAULT_JOB_EXPIRY
from batchd.core.keys import Keys
from batchd.core.scripts import Scripts
from batchd.core.upload import UploadSession, drop_if_owner

__all__ = ["BatchStore", "UploadSession"]

# A listing reads at most this many chunks (items) or index entries (batches) per
# call, so a filter that matches little returns a short page instead of scanning on.
_MAX_SCAN_CHUNKS = 64
_MAX_SCAN_BATCHES = 1000
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
        """Newest first; returns (batches, next cursor or "").

        The cursor is the (create ms, batch id) of the last entry looked at; a page may
        be short when a state filter skips many batches.
        """
        page_size, wanted = max(1, page_size), set(states)
        top: float | str = "+inf"
        after: tuple[int, str] | None = None
        if cursor:
            after = _parse_batch_cursor(cursor)
            top = after[0]
        window = page_size + 1 if not wanted else max(page_size + 1, 200)
        found: list[BatchRecord] = []
        offset = scanned = 0
        last = (0, "")  # the last entry looked at
        while scanned < _MAX_SCAN_BATCHES:
            entries = await self.redis.zrevrangebyscore(
                self.keys.batches, top, "-inf", start=offset, num=window, withscores=True
            )
            if not entries:
                return found, ""
            offset += len(entries)
            index = [(bytes(member).decode(), int(score)) for member, score in entries]
            if after is not None:  # ties on create ms sort by id, descending
                index = [(b, ms) for b, ms in index if ms < after[0] or b < after[1]]
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id, _ in index:
                    pipe.hgetall(self.keys.meta(batch_id))
                metas = await pipe.execute()
            for position, ((batch_id, ms), meta) in enumerate(zip(index, metas, strict=True)):
                scanned += 1
                last = (ms, batch_id)
                if not meta:
                    continue
                record = codec.decode_meta(batch_id, meta)
                if wanted and record.state not in wanted:
                    continue
                found.append(record)
                if len(found) == page_size:
                    more = position + 1 < len(index) or len(entries) == window
                    return found, _batch_cursor(ms, batch_id) if more else ""
            if len(entries) < window:
                return found, ""
        return found, _batch_cursor(*last)

    async def list_items(
        self, batch_id: str, page_size: int, cursor: str, states: Sequence[ItemState]
    ) -> tuple[list[ItemView], str]:
        """In submission order; a page may be short when a filter skips many items.

        The cursor is the global index to continue from.
        """
        total_raw, size_raw = await self.redis.hmget(  # type: ignore[misc]
            self.keys.meta(batch_id), ["total", "chunk_size"]
        )
        if total_raw is None:
            raise NotFound(f"batch {batch_id!r} not found")
        total, size = int(total_raw), int(size_raw)
        start = _parse_index_cursor(cursor) if cursor else 0
        page_size, wanted = max(1, page_size), set(states)
        if wanted == {ItemState.FAILED}:
            return await self._list_failed(batch_id, size, page_size, start)

        found: list[ItemView] = []
        index, budget = start, _MAX_SCAN_CHUNKS
        while index < total and budget > 0:
            first_chunk = index // size
            span = min(budget, -(-page_size // size) + 1, -(-total // size) - first_chunk)
            budget -= span
            for chunk, items, outcomes, claimed in await self._read_chunks(
                batch_id, range(first_chunk, first_chunk + span)
            ):
                fallback = _UNRECORDED.get(claimed or b"", ItemState.PENDING)
                for offset in range(index - chunk * size, len(items)):
                    custom_id, _ = items[offset]
                    raw = outcomes.get(str(offset).encode())
                    view = (
                        codec.decode_outcome(index, custom_id, raw)
                        if raw is not None
                        else ItemView(custom_id=custom_id, index=index, state=fallback)
                    )
                    index += 1
                    if wanted and view.state not in wanted:
                        continue
                    found.append(view)
                    if len(found) == page_size:
                        return found, _index_cursor(index, total)
                index = (chunk + 1) * size
        return found, _index_cursor(index, total)

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

    async def _read_chunks(
        self, batch_id: str, chunks: range
    ) -> list[tuple[int, list[tuple[str, bytes]], dict[bytes, bytes], bytes | None]]:
        """(chunk, items, outcomes, claim state) of each chunk, in one round trip."""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.get(keys.chunk(batch_id, chunk))
                pipe.hgetall(keys.outcomes(batch_id, chunk))
                pipe.hget(keys.chunk_states(batch_id), str(chunk))
            replies = await pipe.execute()
        read = []
        for position, chunk in enumerate(chunks):
            raw, outcomes, claimed = replies[3 * position : 3 * position + 3]
            items = codec.decode_chunk(raw) if raw is not None else []
            read.append((chunk, items, outcomes, claimed))
        return read

    async def _list_failed(
        self, batch_id: str, size: int, page_size: int, start: int
    ) -> tuple[list[ItemView], str]:
        """FAILED items only, straight from the `failed` index."""
        members = await self.redis.zrangebyscore(
            self.keys.failed(batch_id), start, "+inf", start=0, num=page_size + 1
        )
        indexes = [int(member) for member in members]
        more = len(indexes) > page_size
        indexes = indexes[:page_size]
        by_chunk: dict[int, list[int]] = {}
        for index in indexes:
            by_chunk.setdefault(index // size, []).append(index)
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk, wanted in by_chunk.items():
                pipe.get(self.keys.chunk(batch_id, chunk))
                pipe.hmget(self.keys.outcomes(batch_id, chunk), [i - chunk * size for i in wanted])
            replies = iter(await pipe.execute())
        views: list[ItemView] = []
        for chunk, wanted in by_chunk.items():
            items, outcomes = codec.decode_chunk(next(replies)), next(replies)
            for index, raw in zip(wanted, outcomes, strict=True):
                custom_id = items[index - chunk * size][0]
                views.append(codec.decode_outcome(index, custom_id, raw))
        return views, codec.encode_token(str(indexes[-1] + 1)) if more else ""


# An item without an outcome reads as its chunk's claim state says.
_UNRECORDED = {b"c": ItemState.CANCELLED, b"r": ItemState.RUNNING}


def _batch_cursor(created_ms: int, batch_id: str) -> str:
    return codec.encode_token(f"{created_ms}:{batch_id}")


def _parse_batch_cursor(cursor: str) -> tuple[int, str]:
    created, sep, batch_id = codec.decode_token(cursor).partition(":")
    if not sep or not created.isdigit():
        raise InvalidRequest.for_field("page_token", "not a page token of this listing")
    return int(created), batch_id


def _index_cursor(index: int, total: int) -> str:
    return codec.encode_token(str(index)) if index < total else ""


def _parse_index_cursor(cursor: str) -> int:
    text = codec.decode_token(cursor)
    if not text.isdigit():
        raise InvalidRequest.for_field("page_token", "not a page token of this listing")
    return int(text)
