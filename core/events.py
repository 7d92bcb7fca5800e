"""Batch events: one Redis stream per tenant, read by WatchBatches.

The scripts that make a batch's transitions append an event to its tenant's stream in
the same atomic step (core/lua/_batch.lua, `batch_event`; the commit of a new batch, in
batchd.core.upload), capped at about `events_retain` entries (XADD MAXLEN ~). A stream
entry's id is the event's cursor: a reader resumes after it, and learns when events
after it were trimmed. See docs/design.md, "Batch events".
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from batchd.core.domain import BatchState, ItemCounts
from batchd.core.errors import FailedPrecondition, InvalidRequest
from batchd.core.keys import Keys

__all__ = [
    "DEFAULT_EVENTS_RETAIN",
    "OLDEST",
    "BatchEvent",
    "BatchEventType",
    "EventLog",
    "EventPage",
    "append_created",
    "check_cursor",
]

# Events a tenant's stream keeps by default (Settings.events_retain).
DEFAULT_EVENTS_RETAIN = 100_000
# The cursor before every event: a read from it starts with the oldest one retained.
OLDEST = "0-0"
# A cursor is a stream id, `<ms>-<sequence>`.
CURSOR_PATTERN = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
RETAIN_SETTING = "BATCHD_EVENTS_RETAIN"


class BatchEventType(enum.IntEnum):
    """As the proto's BatchEventType numbers them; the Lua scripts write the names
    (tests/core/test_events.py checks that every name they write is one)."""

    CREATED = 1
    STARTED = 2
    PAUSED = 3
    RESUMED = 4
    CANCEL_REQUESTED = 5
    FINISHED = 6
    RETRIED = 7
    DELETED = 8


@dataclass(frozen=True)
class BatchEvent:
    """One event: what happened to a batch, and the batch right after it. `time`: Unix
    seconds. `counts.running` holds every item a worker holds (claimed ones too)."""

    cursor: str
    type: BatchEventType
    time: float
    batch_id: str
    state: BatchState
    handler: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    total_items: int = 0
    counts: ItemCounts = field(default_factory=ItemCounts)


@dataclass(frozen=True)
class EventPage:
    """Events after a cursor, and the position read up to (the last one's cursor, or the
    cursor read from when there were none)."""

    events: Sequence[BatchEvent]
    position: str


def check_cursor(cursor: str, field_name: str = "cursor") -> str:
    """`cursor` if it has a cursor's form; InvalidRequest naming `field_name` if not."""
    if not CURSOR_PATTERN.fullmatch(cursor):
        raise InvalidRequest.for_field(
            field_name, "not a cursor: pass one that an event of this service carried"
        )
    return cursor


def append_created(
    pipe: Pipeline, keys: Keys, tenant: str, retain: int, fields: Mapping[str, Any]
) -> None:
    """Queues the CREATED event of a batch being committed on `pipe` (inside its
    MULTI); `fields` as the batch's meta holds them (handler, total, metadata, created,
    and its batch id as `batch`). Nothing with `retain` 0."""
    if retain <= 0:
        return
    entry: dict[FieldT, EncodableT] = {
        "type": BatchEventType.CREATED.name,
        "batch": fields["batch"],
        "at": fields["created"],
        "state": int(BatchState.QUEUED),
        "handler": fields["handler"],
        "total": fields["total"],
        "run": 0,
        "ok": 0,
        "fail": 0,
        "cancel": 0,
        "exp": 0,
        "metadata": fields["metadata"],
    }
    pipe.xadd(keys.events(tenant), entry, maxlen=retain, approximate=True)


class EventLog:
    """Reads the tenants' event streams."""

    def __init__(self, redis: Redis, keys: Keys, *, retain: int = DEFAULT_EVENTS_RETAIN) -> None:
        self.redis = redis
        self.keys = keys
        self.retain = retain
        self._read = redis.register_script(
            resources.files("batchd.core").joinpath("lua", "read_events.lua").read_text("utf-8")
        )

    async def position_now(self, tenant: str) -> str:
        """The cursor of the tenant's latest event (OLDEST without one): a read from it
        returns the events from now on."""
        return (await self.read(tenant, "", 0)).position

    async def read(self, tenant: str, cursor: str, count: int) -> EventPage:
        """Up to `count` of the tenant's events after `cursor` (OLDEST: from the oldest
        retained; "": none, only the position now). FailedPrecondition when the
        cursor's event was trimmed (and perhaps some after it), or the cursor is past
        the stream's end."""
        reply = await self._read(keys=[self.keys.events(tenant)], args=[cursor, count])
        status = bytes(reply[0]).decode()
        if status == "trimmed":
            raise FailedPrecondition(
                f"the event of cursor {cursor} was trimmed, and perhaps some after it: "
                f"the service keeps about "
                f"{self.retain} events per tenant ({RETAIN_SETTING}). Start again with "
                "from_oldest (or an empty cursor, from now) and read the batches' state "
                "with ListBatches"
            )
        if status == "ahead":
            raise FailedPrecondition(
                f"cursor {cursor} is past the last event ({bytes(reply[1]).decode()}): it "
                "is not one of this service's, or its events were lost (Redis was "
                "emptied). Start again with from_oldest or an empty cursor"
            )
        position = bytes(reply[1]).decode()
        return EventPage([_decode(entry) for entry in reply[2]], position)

    async def wait_after(self, tenant: str, cursor: str, block_ms: int) -> str | None:
        """Blocks up to `block_ms` for an event after `cursor`; the cursor of the latest
        event then, or None when none came."""
        key = self.keys.events(tenant)
        reply = await self.redis.xread({key: cursor}, count=1, block=block_ms)
        if not reply:
            return None
        latest = await self.redis.xrevrange(key, count=1)
        return bytes(latest[0][0]).decode() if latest else None


def _decode(entry: Sequence[Any]) -> BatchEvent:
    """A BatchEvent from an XRANGE entry (id, [field, value, ...])."""
    raw_id, flat = entry
    values = {bytes(flat[i]).decode(): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    def number(name: str) -> int:
        return int(values.get(name, b"0"))

    total, taken = number("total"), number("run")
    ok, failed, cancelled, expired = (number(n) for n in ("ok", "fail", "cancel", "exp"))
    return BatchEvent(
        cursor=bytes(raw_id).decode(),
        type=BatchEventType[values["type"].decode()],
        time=number("at") / 1000,
        batch_id=values["batch"].decode(),
        state=BatchState(number("state")),
        handler=values.get("handler", b"").decode(),
        metadata=json.loads(values.get("metadata", b"{}")),
        total_items=total,
        counts=ItemCounts(
            pending=max(total - taken - ok - failed - cancelled - expired, 0),
            running=taken,
            succeeded=ok,
            failed=failed,
            cancelled=cancelled,
            expired=expired,
        ),
    )
