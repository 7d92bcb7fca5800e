"""Listing batches and items: paging over the batch index and over a batch's chunks.

Page tokens are opaque (`codec.encode_token`): `<create ms>:<batch id>` of the last
batch looked at, or the global index of the next item. A call reads a bounded amount,
so a page may be short when a state filter matches little; its token continues.

An item reads as its outcome record; else, waiting for a retry, as PENDING with its last
attempt; else as its chunk's state says: RUNNING in a claimed chunk, CANCELLED in a
cancelled one, EXPIRED in an expired one, PENDING otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from batchd.core import codec
from batchd.core.domain import BatchRecord, BatchState, ItemState, ItemView
from batchd.core.errors import InvalidRequest, NotFound
from batchd.core.keys import Keys

# A call reads at most this many chunks (items) or index entries (batches).
_MAX_SCAN_CHUNKS = 64
_MAX_SCAN_BATCHES = 1000


async def list_batches(
    redis: Redis,
    keys: Keys,
    page_size: int,
    cursor: str,
    states: Sequence[BatchState],
    index_key: str | None = None,
    handler: str = "",
) -> tuple[list[BatchRecord], str, list[str]]:
    """Newest first, from the index `index_key` (default: every batch's), of `handler`
    only if given; returns (batches, next cursor or "", ids seen whose meta is gone).

    The cursor is the (create ms, batch id) of the last entry looked at; a page may
    be short when a filter skips many batches. The caller prunes the gone ids.
    """
    page_size, wanted = max(1, page_size), set(states)
    top: float | str = "+inf"
    after: tuple[int, str] | None = None
    if cursor:
        after = _parse_batch_cursor(cursor)
        top = after[0]
    window = page_size + 1 if not (wanted or handler) else max(page_size + 1, 200)
    found: list[BatchRecord] = []
    gone: list[str] = []
    offset = scanned = 0
    last = (0, "")  # the last entry looked at
    while scanned < _MAX_SCAN_BATCHES:
        entries = await redis.zrevrangebyscore(
            index_key or keys.batches, top, "-inf", start=offset, num=window, withscores=True
        )
        if not entries:
            return found, "", gone
        offset += len(entries)
        index = [(bytes(member).decode(), int(score)) for member, score in entries]
        if after is not None:  # ties on create ms sort by id, descending
            index = [(b, ms) for b, ms in index if ms < after[0] or b < after[1]]
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id, _ in index:
                pipe.hgetall(keys.meta(batch_id))
                pipe.hgetall(keys.running(batch_id))
                pipe.hgetall(keys.started(batch_id))
            replies = await pipe.execute()
        metas = [
            (meta, codec.in_flight(running, started))
            for meta, running, started in zip(
                replies[::3], replies[1::3], replies[2::3], strict=True
            )
        ]
        for position, ((batch_id, ms), (meta, flying)) in enumerate(zip(index, metas, strict=True)):
            scanned += 1
            last = (ms, batch_id)
            if not meta:
                gone.append(batch_id)
                continue
            record = codec.decode_meta(batch_id, meta, flying)
            if (wanted and record.state not in wanted) or (handler and record.handler != handler):
                continue
            found.append(record)
            if len(found) == page_size:
                more = position + 1 < len(index) or len(entries) == window
                return found, _batch_cursor(ms, batch_id) if more else "", gone
        if len(entries) < window:
            return found, "", gone
    return found, _batch_cursor(*last), gone


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
        for chunk in await _read_chunks(
            redis, keys, batch_id, range(first_chunk, first_chunk + span), size
        ):
            fallback = unrecorded(chunk.state)
            for offset in range(index - chunk.number * size, len(chunk.items)):
                custom_id, _ = chunk.items[offset]
                raw = chunk.outcomes.get(str(offset).encode())
                due = chunk.waiting.get(offset)
                if raw is not None:
                    view = codec.decode_outcome(index, custom_id, raw)
                elif due is not None:
                    view = codec.waiting_view(index, custom_id, due, chunk.attempts.get(index))
                else:
                    view = ItemView(custom_id=custom_id, index=index, state=fallback)
                index += 1
                if wanted and view.state not in wanted:
                    continue
                found.append(view)
                if len(found) == page_size:
                    return found, _index_cursor(index, total)
            index = (chunk.number + 1) * size
    return found, _index_cursor(index, total)


@dataclass(frozen=True)
class _Chunk:
    number: int
    items: list[tuple[str, bytes]]
    outcomes: dict[bytes, bytes]  # local index -> outcome record
    state: bytes | None  # claim state
    waiting: dict[int, int]  # local index -> due ms
    attempts: dict[int, bytes]  # global index -> attempts entry (of waiting items)


async def _read_chunks(
    redis: Redis, keys: Keys, batch_id: str, chunks: range, size: int
) -> list[_Chunk]:
    """Each chunk's items, outcomes, state and retries, in one or two round trips."""
    async with redis.pipeline(transaction=False) as pipe:
        for chunk in chunks:
            pipe.get(keys.chunk(batch_id, chunk))
            pipe.hgetall(keys.outcomes(batch_id, chunk))
            pipe.hget(keys.chunk_states(batch_id), str(chunk))
            pipe.zrange(keys.waiting(batch_id, chunk), 0, -1, withscores=True)
        replies = await pipe.execute()
    parts = [replies[4 * at : 4 * at + 4] for at in range(len(chunks))]
    waiting = [{int(local): int(due) for local, due in part[3]} for part in parts]
    indexes = [n * size + local for n, due in zip(chunks, waiting, strict=True) for local in due]
    attempts: dict[int, bytes] = {}
    if indexes:
        entries = await redis.hmget(keys.attempts(batch_id), indexes)  # type: ignore[misc]
        attempts = {index: raw for index, raw in zip(indexes, entries, strict=True) if raw}
    read = []
    for n, (raw, outcomes, state, _), due in zip(chunks, parts, waiting, strict=True):
        items = codec.decode_chunk(raw) if raw is not None else []
        read.append(_Chunk(n, items, outcomes, state, due, attempts))
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


def unrecorded(state: bytes | None) -> ItemState:
    """How an item with no outcome and no retry reads, by its chunk's claim state."""
    if state is None or state == b"d":
        return ItemState.PENDING
    if state == b"c":
        return ItemState.CANCELLED
    if state == b"x":
        return ItemState.EXPIRED
    return ItemState.RUNNING  # b"r:<token>"


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
