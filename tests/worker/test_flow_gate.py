"""The chunk run's max_concurrent holding (batchd.worker.flow_gate), against a store stub
whose calls the test holds up: what it gives back is never used while in flight."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from batchd.core.domain import BatchOptions, BatchState, ClaimedChunk
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.worker.flow_gate import _BatchSlots


class HeldUpStore:
    """hold_slots as Redis would answer it for one holder, held up while `paused`."""

    def __init__(self) -> None:
        self.holding = 0
        self.calls: list[int] = []
        self.go = asyncio.Event()
        self.go.set()

    async def hold_slots(
        self, batch_id: str, chunk: int, token: str, count: int, *, limit: int
    ) -> tuple[int, BatchState]:
        self.calls.append(count)
        await self.go.wait()
        self.holding = min(count, limit)
        return self.holding, BatchState.RUNNING


async def test_slots_given_back_are_not_used_while_the_call_is_in_flight() -> None:
    store = HeldUpStore()
    claimed = ClaimedChunk("b", 0, "h", BatchOptions(max_concurrent=3), 0, [], token="t")
    queued = [5]
    slots = _BatchSlots(cast(BatchStore, store), claimed, 3, lambda: queued[0], get_logger("test"))
    never: Any = lambda: False  # noqa: E731
    for _ in range(3):
        assert await slots.acquire(never)
    assert (slots.held, slots.in_use, store.holding) == (3, 3, 3)

    # The queue runs dry: a finished item's slot goes back — and the call is held up.
    queued[0] = 0
    store.go.clear()
    giving_back = asyncio.create_task(slots.release())
    await asyncio.sleep(0.01)
    assert store.calls[-1] == 2
    # An item put back in the queue meanwhile may not take the slot being given back.
    queued[0] = 1
    taking = asyncio.create_task(slots.acquire(never))
    await asyncio.sleep(0.1)
    assert not taking.done()
    assert slots.in_use == 2
    store.go.set()
    await giving_back
    assert await asyncio.wait_for(taking, 1)  # then it asks Redis again, and gets it
    assert (slots.in_use, store.holding) == (3, 3)
