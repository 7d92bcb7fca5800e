"""`BackgroundTasks`: the tasks a part of a server or worker starts on its own, ended
together.

Each of them may be in a Redis call; a process ends them before its Redis pool closes,
since a call that outlived the close would reconnect a connection nobody closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTasks"]


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Runs `work` as a task kept here until it ends."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self, within: float | None = None) -> int:
        """Cancels what still runs and waits for it to end (its errors are its own), for
        at most `within` seconds if given; returns how many had not ended by then."""
        running = list(self._tasks)
        for task in running:
            task.cancel()
        if not running:
            return 0
        if within is None:
            await asyncio.gather(*running, return_exceptions=True)
            return 0
        _, stuck = await asyncio.wait(running, timeout=within)
        return len(stuck)
