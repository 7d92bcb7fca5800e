"""Exporting a finished batch's results: every item's outcome, a page at a time, in
submission order or by custom_id (docs/design.md, "Exports").

Submission order walks the chunks as ListBatchItems does. Custom-id order walks a sorted
set of `<custom_id> <index>` members (Keys.ids_by_name), which the first export in that
order builds from the ids hash inside Redis, a slice per step, and which expires. Pages
are read one ahead of the caller, so that Redis and the caller's writes overlap; memory
stays at two pages.

An export is of a finished batch only: its outcomes no longer change. A page read after
the batch was retried (RUNNING again) ends the export with FailedPrecondition; its
cursor resumes it once the batch has finished again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from batchd.core import codec
from batchd.core.domain import BatchState
from batchd.core.errors import FailedPrecondition, InvalidRequest, NotFound
from batchd.core.keys import Keys
from batchd.core.listing import unrecorded
from batchd.core.scripts import Scripts

__all__ = ["ExportOrder", "ExportPage", "Row", "cursor_after", "export_pages"]

# Items per page: a page is one or two round trips, and the caller sends it as one
# message or a few.
PAGE_ITEMS = 2_000
# Chunks per read in submission order (a page is whole chunks, at least one).
_MAX_PAGE_CHUNKS = 256
# Entries of the ids hash one step of the index build moves (one Lua call).
_INDEX_STEP = 5_000
# How long a custom-id index lives (less if the batch's retention ends sooner); an
# export that outlasts it builds it again.
_INDEX_TTL_MS = 3_600_000


class ExportOrder(enum.Enum):
    SUBMISSION = "s"
    CUSTOM_ID = "n"


# One exported item: (custom_id, index, codec.outcome_fields of its outcome).
Row = tuple[str, int, list[Any]]


@dataclass(frozen=True)
class ExportPage:
    """The next items of an export; `position`: items of the export up to and including
    the page's last; `total`: items of the whole export."""

    rows: list[Row]
    position: int
    total: int


def cursor_after(order: ExportOrder, row: Row) -> str:
    """The opaque cursor an export resumes from, with the item after `row`."""
    custom_id, index, _ = row
    mark = str(index) if order is ExportOrder.SUBMISSION else custom_id
    return codec.encode_token(f"{order.value}:{mark}")


def _parse_cursor(order: ExportOrder, cursor: str) -> str:
    """The index or custom_id a cursor names; InvalidRequest on `after` otherwise."""
    try:
        text = codec.decode_token(cursor)
    except InvalidRequest:
        raise InvalidRequest.for_field("after", "not a cursor of an export") from None
    tag, sep, mark = text.partition(":")
    if not sep or tag not in {o.value for o in ExportOrder} or not mark:
        raise InvalidRequest.for_field("after", "not a cursor of an export")
    if tag != order.value:
        raise InvalidRequest.for_field("after", "a cursor of an export in the other order")
    if order is ExportOrder.SUBMISSION and not mark.isdigit():
        raise InvalidRequest.for_field("after", "not a cursor of an export")
    if order is ExportOrder.CUSTOM_ID and " " in mark:
        raise InvalidRequest.for_field("after", "not a cursor of an export")
    return mark


async def export_pages(
    redis: Redis, keys: Keys, scripts: Scripts, batch_id: str, order: ExportOrder, after: str
) -> AsyncIterator[ExportPage]:
    """The pages of the export of a finished batch, after the item `after` names (a
    cursor_after; empty: from the first). NotFound, FailedPrecondition while the batch
    is unfinished, InvalidRequest for a bad cursor: before the first page."""
    mark = _parse_cursor(order, after) if after else None
    reader: _Reader
    if order is ExportOrder.SUBMISSION:
        reader = _BySubmission(redis, keys, batch_id)
    else:
        reader = _ByName(redis, keys, scripts, batch_id)
    await reader.open(mark)
    pending: asyncio.Future[ExportPage | None] | None = asyncio.ensure_future(reader.next())
    try:
        while pending is not None:
            page = await pending
            if page is None:
                return
            # The next page is read while the caller sends this one.
            pending = asyncio.ensure_future(reader.next()) if reader.more else None
            yield page
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


class _Reader:
    more = True

    async def open(self, mark: str | None) -> None:
        raise NotImplementedError

    async def next(self) -> ExportPage | None:
        raise NotImplementedError


def _check_finished(batch_id: str, state: bytes | int | None) -> None:
    if state is None:
        raise NotFound(f"batch {batch_id!r} not found")
    batch_state = BatchState(int(state))
    if not batch_state.is_terminal:
        raise FailedPrecondition(
            f"batch {batch_id!r} is {batch_state.name}: its results can be exported once it "
            "has finished"
        )


class _BySubmission(_Reader):
    def __init__(self, redis: Redis, keys: Keys, batch_id: str) -> None:
        self.redis, self.keys, self.batch_id = redis, keys, batch_id
        self.index = self.total = self.size = 0

    async def open(self, mark: str | None) -> None:
        state, total, size = await self.redis.hmget(  # type: ignore[misc]
            self.keys.meta(self.batch_id), ["state", "total", "chunk_size"]
        )
        _check_finished(self.batch_id, state)
        self.total, self.size = int(total), int(size)
        if mark is not None:
            if int(mark) >= self.total:
                raise InvalidRequest.for_field("after", "beyond the batch's last item")
            self.index = int(mark) + 1
        self.more = self.index < self.total

    async def next(self) -> ExportPage | None:
        if self.index >= self.total:
            self.more = False
            return None
        first = self.index // self.size
        span = min(_MAX_PAGE_CHUNKS, max(1, PAGE_ITEMS // self.size))
        chunks = range(first, min(-(-self.total // self.size), first + span))
        keys, batch_id = self.keys, self.batch_id
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in chunks:
                pipe.get(keys.chunk(batch_id, n))
                pipe.hgetall(keys.outcomes(batch_id, n))
            pipe.hmget(keys.chunk_states(batch_id), list(chunks))
            # Last: a batch retried meanwhile may have shown unfinished items.
            pipe.hget(keys.meta(batch_id), "state")
            *replies, claims, state = await pipe.execute()
        _check_finished(batch_id, state)
        rows: list[Row] = []
        for at, n in enumerate(chunks):
            raw, outcomes = replies[2 * at], replies[2 * at + 1]
            if raw is None:
                raise NotFound(f"batch {batch_id!r} not found")
            fallback = codec.unrecorded_fields(unrecorded(claims[at]))
            base = n * self.size
            entries = codec.chunk_entries(raw)
            for local in range(self.index - base, len(entries)):
                record = outcomes.get(b"%d" % local)
                fields = fallback if record is None else codec.outcome_fields(record)
                rows.append((entries[local][0], base + local, fields))
            self.index = base + self.size
        self.index = min(self.index, self.total)
        self.more = self.index < self.total
        if not rows:
            return None
        return ExportPage(rows, rows[-1][1] + 1, self.total)


class _ByName(_Reader):
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, batch_id: str) -> None:
        self.redis, self.keys, self.scripts, self.batch_id = redis, keys, scripts, batch_id
        self.bound = "-"
        self.total = 0

    async def open(self, mark: str | None) -> None:
        state, total = await self.redis.hmget(  # type: ignore[misc]
            self.keys.meta(self.batch_id), ["state", "total"]
        )
        _check_finished(self.batch_id, state)
        self.total = int(total)
        if mark is not None:
            # Members are `<custom_id> <index>`, ids have no `!` and ` ` sorts before every
            # character they have: every member of a later id is above `<mark>!`, and every
            # member of `mark` itself below it.
            self.bound = f"[{mark}!"

    async def next(self) -> ExportPage | None:
        reply = await self._read()
        if len(reply) == 1:  # no index (yet, or any more): build it, then read again
            _check_finished(self.batch_id, reply[0])
            await self._build_index()
            reply = await self._read()
        if not reply:
            raise NotFound(f"batch {self.batch_id!r} not found")
        _check_finished(self.batch_id, reply[0])
        if len(reply) < 3:
            self.more = False
            return None
        rows: list[Row] = []
        for at in range(2, len(reply), 3):
            member, record, claim = reply[at : at + 3]
            custom_id, _, index = bytes(member).decode().rpartition(" ")
            if record is None:
                fields = codec.unrecorded_fields(unrecorded(claim))
            else:
                fields = codec.outcome_fields(record)
            rows.append((custom_id, int(index), fields))
        self.bound = f"[{rows[-1][0]}!"
        self.more = len(rows) == PAGE_ITEMS
        return ExportPage(rows, int(reply[1]), self.total)

    async def _read(self) -> list[Any]:
        keys = self.keys
        reply: list[Any] = await self.scripts.export_by_name(
            keys=[
                keys.meta(self.batch_id),
                keys.ids_by_name(self.batch_id),
                keys.chunk_states(self.batch_id),
            ],
            args=[keys.batch_prefix(self.batch_id), self.bound, PAGE_ITEMS],
        )
        return reply

    async def _build_index(self) -> None:
        """Builds the custom-id index under a name of its own, then renames it into place:
        exports building it at once each build a whole one, and the last rename wins."""
        keys = self.keys
        target = keys.ids_by_name(self.batch_id)
        building = f"{target}:{uuid.uuid4().hex}"  # the batch's hash tag, as the rename needs
        cursor: bytes | str | int = "0"
        while True:
            cursor = await self.scripts.index_ids(
                keys=[keys.ids(self.batch_id), building], args=[cursor, _INDEX_STEP, _INDEX_TTL_MS]
            )
            if int(cursor) == 0:
                break
        ttl = await self.redis.pttl(keys.meta(self.batch_id))
        ttl = _INDEX_TTL_MS if ttl < 0 else min(ttl, _INDEX_TTL_MS)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rename(building, target)
            pipe.pexpire(target, max(ttl, 1))
            await pipe.execute()
