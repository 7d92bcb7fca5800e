"""Helpers for fault-injection tests."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc

from batchd.client import AsyncClient, BatchdError


async def wait_for_handler(client: AsyncClient, name: str) -> None:
    """Workers publish their catalog from other processes: poll until one has (and
    until the server, if it was just started, listens)."""
    async with asyncio.timeout(30):
        # Another process's state: there is nothing to subscribe to.
        while not await _serves(client, name):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _serves(client: AsyncClient, name: str) -> bool:
    try:
        handlers = await client.handlers()
    except BatchdError as exc:
        if exc.code is grpc.StatusCode.UNAVAILABLE:
            return False  # a server process still starting
        raise
    return any(h.name == name and h.live_workers for h in handlers)


def applied(effects_log: Path) -> list[tuple[str, int]]:
    """Every application of an item's effect, in order: (idempotency key, worker pid), as
    chaos_handlers and append_handler log them."""
    if not effects_log.exists():
        return []
    pairs = []
    for line in effects_log.read_text().splitlines():
        key, pid = line.rsplit(" ", 1)
        pairs.append((key, int(pid)))
    return pairs


def rng(seed: int = 7) -> random.Random:
    return random.Random(seed)
