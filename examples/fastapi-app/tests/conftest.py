"""A real batchd (server, worker and Redis, from batchd.testing) serving `text.upper`, and
the app under uvicorn in a process of its own on a free port, as it would be deployed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchd.testing import LocalService, serve_handlers
from batchd.worker import ItemContext, PermanentError, handler

EXAMPLE = Path(__file__).resolve().parents[1]


@handler(
    "text.upper",
    params_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
        "required": ["text"],
        "additionalProperties": False,
    },
)
async def text_upper(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    """Returns the text in capitals, `times` times over; fails on the text "boom"."""
    if params["text"] == "boom":
        raise PermanentError("boom, as asked")
    return {"upper": params["text"].upper() * params.get("times", 1)}


@pytest.fixture(scope="session")
async def batchd() -> AsyncIterator[LocalService]:
    async with serve_handlers(text_upper) as service:
        yield service


@dataclass
class App:
    """The app's process and its base URL."""

    process: asyncio.subprocess.Process
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running_app(target: str) -> AsyncIterator[App]:
    """`uvicorn --factory webapp:create_app` on a free port, calling batchd at `target`."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "webapp:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "BATCHD_TARGET": target}
    process = await asyncio.create_subprocess_exec(*command, cwd=EXAMPLE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        await _until_up(process, url)
        yield App(process, url)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


@pytest.fixture(scope="session")
async def app(batchd: LocalService) -> AsyncIterator[App]:
    async with running_app(batchd.target) as running:
        yield running


async def _until_up(process: asyncio.subprocess.Process, url: str) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        for _ in range(300):
            if process.returncode is not None:
                raise RuntimeError(f"uvicorn exited with {process.returncode}")
            try:
                if (await http.get("/openapi.json")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the app did not answer within 30 s")


@pytest.fixture
async def http(app: App) -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: the app is on loopback; no proxy from the environment.
    async with httpx.AsyncClient(base_url=app.url, timeout=60, trust_env=False) as client:
        yield client
