"""`FifoSemaphore`: a semaphore that hands a freed slot straight to its longest waiter;
the worker's items-in-flight limit (`WorkerRuntime.in_flight`).

asyncio.Semaphore (Python 3.11) wakes a waiter by scanning its waiters from the front for
one not yet woken, and a woken waiter leaves the queue only when it next runs. With
thousands of consumers waiting (every chunk run of a busy worker has its pool), each
release scans dozens of woken waiters (docs/performance.md). Here a release hands its
slot to the first live waiter in O(1) (amortised), and the waiter owns it from that
moment, so nothing can take it in between.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FifoSemaphore"]


class FifoSemaphore:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

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
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # cancelled waiters are skipped
                waiter.set_result(None)
                return
        self._free += 1
