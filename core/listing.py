"""Listing batches and items: paging over the batch index and over a batch's chunks.

Page tokens are opaque (`codec.encode_token`): `<create ms>:<batch id>` of the last
batch looked at, or the global index of the next item. A call reads a bounded amount,
so a page may be short when a state filter matches little; its token continues.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from batchd.core import codec
from batchd.core.domain import BatchRecord, BatchState, ItemState, ItemView
from batchd.core.errors import InvalidRequest, NotFound
from batchd.core.keys import Keys

# A call reads at most this many chunks (items) or index entries (batches).
_MAX_SCAN_CHUNKS = 64
_MAX_SCAN_BATCHES = 1000


async def list_batches(
    redis: Redis, keys: Keys, page_size: int, cursor: str, states: Sequence[BatchState]
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
        entries = await redis.zrevrangebyscore(
            keys.batches, top, "-inf", start=offset, num=window, withscores=True
        )
        if not entries:
            return found, ""
        offset += len(entries)
        index = [(bytes(member).decode(), int(score)) for member, score in entries]
        if after is not None:  # ties on create ms sort by id, descending
            index = [(b, ms) for b, ms in index if ms < after[0] or b < after[1]]
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id, _ in index:
                pipe.hgetall(keys.meta(batch_id))
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
    redis: Redis,
    keys: Keys,
    batch_id: str,
    page_size: int,
    cursor: str,
    states: Sequence[ItemState],
) -> tuple[list[ItemView], str]:
    """In submission order; a page may be short when a filter skips many items.

    The cursor is the global index to continue from.
    """
    total_raw, size_raw = await redis.hmget(  # type: ignore[misc]
        keys.meta(batch_id), ["total", "chunk_size"]
    )
    if total_raw is None:
        raise NotFound(f"batch {batch_id!r} not found")
    total, size = int(total_raw), int(size_raw)
    start = _parse_index_cursor(cursor) if cursor else 0
    page_size, wanted = max(1, page_size), set(states)
    if wanted == {ItemState.FAILED}:
        return await _list_failed(redis, keys, batch_id, size, page_size, start)

    found: list[ItemView] = []
    index, budget = start, _MAX_SCAN_CHUNKS
    while index < total and budget > 0:
        first_chunk = index // size
        span = min(budget, -(-page_size // size) + 1, -(-total // size) - first_chunk)
        budget -= span
        for chunk, items, outcomes, claimed in await _read_chunks(
            redis, keys, batch_id, range(first_chunk, first_chunk + span)
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


async def _read_chunks(
    redis: Redis, keys: Keys, batch_id: str, chunks: range
) -> list[tuple[int, list[tuple[str, bytes]], dict[bytes, bytes], bytes | None]]:
    """(chunk, items, outcomes, claim state) of each chunk, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
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
    redis: Redis, keys: Keys, batch_id: str, size: int, page_size: int, start: int
) -> tuple[list[ItemView], str]:
    """FAILED items only, straight from the `failed` index."""
    members = await redis.zrangebyscore(
        keys.failed(batch_id), start, "+inf", start=0, num=page_size + 1
    )
    indexes = [int(member) for member in members]
    more = len(indexes) > page_size
    indexes = indexes[:page_size]
    by_chunk: dict[int, list[int]] = {}
    for index in indexes:
        by_chunk.setdefault(index // size, []).append(index)
    async with redis.pipeline(transaction=False) as pipe:
        for chunk, wanted in by_chunk.items():
            pipe.get(keys.chunk(batch_id, chunk))
            pipe.hmget(keys.outcomes(batch_id, chunk), [i - chunk * size for i in wanted])
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
