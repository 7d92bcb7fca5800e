"""`FifoSemaphore`: a semaphore that hands a freed slot straight to its longest waiter;
the worker's items-in-flight limit (`WorkerRuntime.in_flight`).

asyncio.Semaphore (Python 3.11) wakes a waiter by scanning its waiters from the front for
one not yet woken, and a woken waiter leaves the queue only when it next runs. With
thousands of consumers waiting (every chunk run of a busy worker has its pool), each
release scans dozens of woken waiters (docs/performance.md). Here a release hands its
slot to the first live waiter in O(1) (amortised), and the waiter owns it from that
moment, so nothing can take it in between.

A waiter for a block of items (`acquire_up_to`) gathers, while it is first in line and
not yet running, every slot freed meanwhile up to what it asked for: a block that ends
frees its slots one by one in a loop, and they go on together to the next block rather
than one to each waiter (which would cut every block down to one item).
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FifoSemaphore"]


class _Waiter:
    __slots__ = ("future", "granted", "want")

    def __init__(self, future: asyncio.Future[None], want: int) -> None:
        self.future = future
        self.want = want
        self.granted = 0


class FifoSemaphore:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[_Waiter] = deque()

    def locked(self) -> bool:
        """No slot free now (an `acquire` would wait)."""
        return self._free == 0

    @property
    def free(self) -> int:
        return self._free

    def try_acquire(self) -> bool:
        """A slot if one is free now (none is while anyone waits: releases hand over)."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        await self.acquire_up_to(1)

    async def acquire_up_to(self, want: int) -> int:
        """At least one slot and at most `want`: those free now, or, after waiting, those
        freed while this waiter was first in line and not yet running. Returns how many."""
        if self._free > 0:
            taken = min(self._free, want)
            self._free -= taken
            return taken
        waiter = _Waiter(asyncio.get_running_loop().create_future(), max(want, 1))
        self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._leave(waiter)
            # Handed slots, then cancelled before using them: pass them on.
            for _ in range(waiter.granted):
                self.release()
            raise
        self._leave(waiter)
        return waiter.granted

    def _leave(self, waiter: _Waiter) -> None:
        """Takes a woken waiter out of line: it gathers no more slots."""
        if self._waiters and self._waiters[0] is waiter:
            self._waiters.popleft()

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.cancelled():  # cancelled waiters are skipped
                self._waiters.popleft()
                continue
            waiter.granted += 1
            if not waiter.future.done():
                waiter.future.set_result(None)
            if waiter.granted >= waiter.want:
                self._waiters.popleft()
            return
        self._free += 1
