"""A local webhook receiver for the greet.send tests: no network needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


@dataclass
class Webhooks:
    """The receiver's base URL and what it was sent.

    /hooks/<name>   200, or 409 for an Idempotency-Key it has seen already
    /busy/<name>    503 (Retry-After: 0) the first time per Idempotency-Key, then 200
    /gone/<name>    404
    /private/<name> 403
    /broken/<name>  500
    """

    url: str = ""
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    async def receive(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.received.append((key, await request.json()))
        kind = request.match_info["kind"]
        first_time = key not in self.seen
        self.seen.add(key)
        if kind == "hooks":
            return web.json_response({}, status=200 if first_time else 409)
        if kind == "busy":
            if first_time:
                return web.Response(status=503, headers={"Retry-After": "0"})
            return web.json_response({})
        status = {"gone": 404, "private": 403, "broken": 500}[kind]
        return web.Response(status=status)


@pytest.fixture(scope="session")
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    app = web.Application()
    app.router.add_post("/{kind:hooks|busy|gone|private|broken}/{name}", hooks.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield hooks
    await runner.cleanup()
