"""Capped exponential back-off between attempts at something that failed for now (Redis
away, a subscription lost)."""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """Capped exponential waits with "equal jitter": half fixed, half random."""

    def __init__(self, first: float = 0.1, cap: float = 1.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        return delay / 2 + random.uniform(0, delay / 2)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.failures = 0
