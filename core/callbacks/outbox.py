"""The outbox of completion callbacks in Redis: claimed, acknowledged, retried, dropped.

Events are filed by the script that ends a batch (core/lua/_callbacks.lua) in
`Keys.callbacks` (a zset by due time) with their records in `Keys.callback_events`.
A claim (claim_callbacks.lua) counts a try and hides the event until its lease ends,
so workers never deliver one attempt twice at once, and a worker that dies mid-delivery
leaves the event due again at the lease's end: delivery is at least once. A settle
(settle_callback.lua) removes an acknowledged event, or makes it due again after its
back-off, or puts back one claimed but never attempted (its try uncounted), or drops it
at its deadline; only the latest claim may do the last three.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.typing import EncodableT

from batchd.core.callbacks.cloudevent import CallbackEvent
from batchd.core.keys import Keys

__all__ = ["CallbackOutbox", "ClaimedEvent"]


def _source(name: str) -> str:
    return resources.files("batchd.core").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ClaimedEvent:
    """An event held for one delivery: its record, and which try this is (1, 2, ...)."""

    event: CallbackEvent
    tries: int


class CallbackOutbox:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._claim = redis.register_script(_source("claim_callbacks.lua"))
        self._settle = redis.register_script(_source("settle_callback.lua"))

    @property
    def _keys(self) -> list[str]:
        k = self.keys
        return [k.callbacks, k.callback_events, k.callback_tries]

    async def claim(self, now: float, lease: float, limit: int) -> list[ClaimedEvent]:
        """Up to `limit` events due at `now`, each hidden from other claims for `lease`
        seconds."""
        now_ms = int(now * 1000)
        flat = await self._claim(keys=self._keys, args=[now_ms, now_ms + int(lease * 1000), limit])
        return [
            ClaimedEvent(CallbackEvent.from_record(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def acknowledge(self, claimed: ClaimedEvent) -> None:
        """The receiver took the event: it is removed."""
        await self._settle(keys=self._keys, args=[claimed.event.event_id, claimed.tries, "done"])

    async def retry_at(self, claimed: ClaimedEvent, due: float) -> bool:
        """The event is due again at `due`; False if a later claim holds it now."""
        args: list[EncodableT] = [claimed.event.event_id, claimed.tries, "retry", int(due * 1000)]
        return bool(await self._settle(keys=self._keys, args=args))

    async def release(self, claimed: ClaimedEvent, due: float) -> bool:
        """The event was not attempted: it is due again at `due`, its claim's try
        uncounted; False if a later claim holds it now."""
        args: list[EncodableT] = [claimed.event.event_id, claimed.tries, "release", int(due * 1000)]
        return bool(await self._settle(keys=self._keys, args=args))

    async def drop(self, claimed: ClaimedEvent) -> bool:
        """The event is given up; False if a later claim holds it now."""
        args: list[EncodableT] = [claimed.event.event_id, claimed.tries, "drop"]
        return bool(await self._settle(keys=self._keys, args=args))

    async def pending(self) -> int:
        """Events not yet acknowledged nor dropped."""
        return int(await self.redis.zcard(self.keys.callbacks))
