"""The dashboard for tests and screenshots: where a server's HTTP listener serves it, a
handler whose items fail with the message they carry, and Debian's Chromium driven by
playwright."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from batchd.client import AsyncClient, Batch
from batchd.server.app import BatchdServer
from batchd.server.dashboard import PREFIX
from batchd.worker import Handler, ItemContext
from batchd.worker.handler import Code, PermanentError
from support.polling import poll

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
INSTALL_CHROMIUM = Path(__file__).resolve().parents[2] / "scripts" / "install-chromium"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def _fail(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    raise PermanentError(str(params.get("message", "failed")), code=Code.INVALID_ARGUMENT)


def failing_handler() -> Handler:
    """`dash.fail`: every item fails for good, with its params' `message` as the error."""
    return Handler(
        name="dash.fail",
        description="Fails every item with the message its params carry.",
        params_schema={
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "additionalProperties": False,
        },
        run=_fail,
    )


def dashboard_url(server: BatchdServer) -> str:
    """Where `server`'s HTTP listener serves its dashboard (start it with metrics_port=0
    for a free port)."""
    assert server.web is not None, "the server has no HTTP listener: metrics_port=0"
    return f"http://{HOST}:{server.web.port}{PREFIX}"


def chromium_problem() -> str | None:
    """Why no Chromium can run here (after trying scripts/install-chromium), or None."""
    result = subprocess.run(
        [str(INSTALL_CHROMIUM)], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        return result.stderr.strip() or "scripts/install-chromium failed"
    return None


@asynccontextmanager
async def chromium() -> AsyncIterator[BrowserContext]:
    """A headless Chromium (Debian's, never a downloaded one) with a fresh profile."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="batchd-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                yield context
            finally:
                await context.close()


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def finished(client: AsyncClient, batch_id: str) -> Batch:
    """The batch once it is terminal."""

    async def probe() -> Batch | None:
        batch = await client.get(batch_id)
        return batch if batch.state.is_terminal else None

    return await poll(probe)


async def read_events(response: aiohttp.ClientResponse, until: str) -> list[tuple[str, object]]:
    """The stream's events up to and including the first named `until`."""
    events: list[tuple[str, object]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
            if name == until:
                return events
    raise AssertionError(f"the stream ended before {until!r}: {events}")
