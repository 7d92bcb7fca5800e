"""A bulk API for tests of handlers that take blocks: POST /greetings takes a JSON array
of {"key", "greeting"} and answers one {"status"} per element (201, or 409 for a key it
has seen), as examples/greeter's greet.bulk expects. It counts at the peer what flow
control promises: when each element arrived, and how many were in flight at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from support.http_peer import serving

__all__ = ["BulkPeer", "running_bulk_peer"]


class BulkPeer:
    def __init__(self, hold: float = 0.0) -> None:
        """`hold`: seconds each request is held before its answer."""
        self.hold = hold
        self.url = ""
        self.arrivals: list[float] = []  # time.monotonic() of each element
        self.sizes: list[int] = []  # elements per request
        self.keys: list[str] = []  # every element's key, repeats included
        self.in_flight = 0  # elements of requests not answered yet
        self.peak = 0
        self.received = asyncio.Event()  # set at each request
        # While cleared, requests wait (a worker can be killed with a block in flight).
        self.open = asyncio.Event()
        self.open.set()

    async def greetings(self, request: web.Request) -> web.Response:
        elements = await request.json()
        now = time.monotonic()
        self.arrivals.extend([now] * len(elements))
        self.sizes.append(len(elements))
        self.in_flight += len(elements)
        self.peak = max(self.peak, self.in_flight)
        self.received.set()
        try:
            await self.open.wait()
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            self.in_flight -= len(elements)
        seen = set(self.keys)
        self.keys.extend(e["key"] for e in elements)
        return web.json_response([{"status": 409 if e["key"] in seen else 201} for e in elements])


@asynccontextmanager
async def running_bulk_peer(hold: float = 0.0) -> AsyncIterator[BulkPeer]:
    """A `BulkPeer` listening on 127.0.0.1 (port 0); its endpoint is `peer.url`."""
    peer = BulkPeer(hold)
    app = web.Application()
    app.router.add_post("/greetings", peer.greetings)
    async with serving(app) as base:
        peer.url = f"{base}/greetings"
        try:
            yield peer
        finally:
            peer.open.set()
