"""Fixtures of the worker tests. The private Redis comes from tests/conftest.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from support.http_peer import serving


@pytest.fixture(scope="session")
async def http_base() -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 (port 0) for `http.request`; its base URL.

    /echo (any method)      200, JSON of what was received, header X-Reply: yes
    /status/<code>          that status; ?retry_after=<v> adds a Retry-After header
    /flaky?key=<k>          503 (Retry-After: 0) twice per key, then 200 {"tries": 3}
    /slow                   answers only when the session ends
    /large                  200, "a" + "é" * 40,000 (80,001 bytes of UTF-8)
    /json                   200, {"ok": true}
    /charset/<name>         200, "héllo" in Content-Type's charset <name>; ?utf8=1: in
                            UTF-8 whatever the charset says; ?large=1: after 70,000
                            "a"s (past the handler's cut)
    """
    tries: dict[str, int] = {}
    ends = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        received = {
            "method": request.method,
            "query": dict(request.query),
            "body": await request.text(),
            "content_type": request.content_type,
            "x_test": request.headers.get("X-Test", ""),
        }
        return web.json_response(received, headers={"X-Reply": "yes"})

    async def status(request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=int(request.match_info["code"]), headers=headers, text="no")

    async def flaky(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        tries[key] = tries.get(key, 0) + 1
        if tries[key] <= 2:
            return web.Response(status=503, headers={"Retry-After": "0"}, text="busy")
        return web.json_response({"tries": tries[key]})

    async def slow(request: web.Request) -> web.Response:
        await ends.wait()
        return web.Response(text="late")

    async def large(request: web.Request) -> web.Response:
        return web.Response(text="a" + "é" * 40_000, charset="utf-8")

    async def json_reply(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"ok": True}), content_type="application/json")

    async def charset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        text = "a" * 70_000 + "héllo" if request.query.get("large") == "1" else "héllo"
        body = text.encode("utf-8" if request.query.get("utf8") == "1" else name)
        return web.Response(body=body, headers={"Content-Type": f"text/plain; charset={name}"})

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/charset/{name}", charset)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/slow", slow)
    app.router.add_get("/large", large)
    app.router.add_get("/json", json_reply)
    async with serving(app) as base:
        yield base
        ends.set()
