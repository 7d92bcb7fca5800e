"""A local HTTP peer for tests: an aiohttp app served on loopback for a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serves `app` on 127.0.0.1 (a port of the system's choice) for the block; yields its
    base URL, `http://127.0.0.1:<port>`. Requests still held at the end get 0.1 s."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
