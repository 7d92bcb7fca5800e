"""Waiting on state that another task or process owns (Redis, a file, a worker's job list),
where there is nothing to subscribe to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02


async def poll(probe: Callable[[], Awaitable[T | None]], within: float = 20) -> T:
    """Awaits `probe` every INTERVAL seconds until it returns something other than None,
    and returns that; fails with TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while (found := await probe()) is None:  # noqa: ASYNC110 (nothing to subscribe to)
            await asyncio.sleep(INTERVAL)
        return found
