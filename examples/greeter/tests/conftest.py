"""A local webhook receiver for the greet.send tests, and a bulk endpoint for greet.bulk's:
no network needed."""

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
    bulk: BulkEndpoint | None = None  # /greetings and /down

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


@dataclass
class BulkEndpoint:
    """A bulk API taking a JSON array of {"key", "greeting"}; one status per element.

    /greetings      200; each element 201, or 409 for a key it has seen, or for a
                    greeting naming "Gone" 404, or naming "Busy" 503 the first time
                    per key; `requests` gets each request's element count
    /down           500 for the whole request
    """

    requests: list[int] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    async def greetings(self, request: web.Request) -> web.Response:
        elements = await request.json()
        self.requests.append(len(elements))
        return web.json_response([{"status": self._status(e)} for e in elements])

    def _status(self, element: dict[str, str]) -> int:
        key, greeting = element["key"], element["greeting"]
        first_time = key not in self.seen
        self.seen.add(key)
        if "Gone" in greeting:
            return 404
        if "Busy" in greeting and first_time:
            return 503
        return 201 if first_time else 409

    async def down(self, request: web.Request) -> web.Response:
        return web.Response(status=500)


@pytest.fixture(scope="session")
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    bulk = BulkEndpoint()
    app = web.Application()
    app.router.add_post("/{kind:hooks|busy|gone|private|broken}/{name}", hooks.receive)
    app.router.add_post("/greetings", bulk.greetings)
    app.router.add_post("/down", bulk.down)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    hooks.bulk = bulk
    yield hooks
    await runner.cleanup()
