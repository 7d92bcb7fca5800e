"""`http.request` items against a local aiohttp server answering in ~5 ms, beside a bare
asyncio + aiohttp script making the same requests at the same concurrency.

The server runs in its own process (`--serve`, `bench.local_server`); it sleeps 5 ms and
answers a short text. The baseline, in the benchmark's process, keeps `--concurrency`
GETs in flight through one aiohttp session (reading each body, as the handler does);
batchd runs the same requests as `http.request` items in one worker at
BATCHD_WORKER_CONCURRENCY equal to it. Beside its items/s, Redis commands per item (INFO
commandstats delta from the upload to the terminal snapshot) and memory per pending item
(the growth of Redis's stored bytes, `bench.service.redis_stored_bytes`, over a second
upload of the same items while the worker is paused, divided by N; that batch is then
cancelled, none of its requests made).

    .venv/bin/python -m bench.http --items 200000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from batchd.client import AsyncClient
from bench.local_server import local_server
from bench.service import (
    Measured,
    Service,
    report,
    running_service,
    upload_and_measure,
    wait_for_handler,
)

DELAY = 0.005  # the server's answer time


async def _answer(request: web.Request) -> web.Response:
    await asyncio.sleep(DELAY)
    return web.Response(text="ok")


def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def bare_requests_per_second(base_url: str, count: int, concurrency: int) -> float:
    """`concurrency` tasks each making requests until `count` are done."""
    left = iter(range(count))

    async def loop(session: aiohttp.ClientSession) -> None:
        for i in left:
            async with session.get(f"{base_url}/item-{i}") as response:
                response.raise_for_status()
                await response.text()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def items(count: int, base_url: str) -> Iterator[tuple[str, dict[str, object]]]:
    for i in range(count):
        yield f"item-{i}", {"url": f"{base_url}/item-{i}"}


async def batchd_run(service: Service, base_url: str, count: int) -> Measured:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "http.request")
        return await upload_and_measure(
            client, service, "http.request", lambda: items(count, base_url), count
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    env = {
        "BATCHD_WORKER_CONCURRENCY": str(args.concurrency),
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # the local server this bench calls
    }
    with local_server("bench.http") as server_port:
        base_url = f"http://127.0.0.1:{server_port}"
        bare = asyncio.run(bare_requests_per_second(base_url, args.items, args.concurrency))
        with running_service(env=env) as service:
            measured = asyncio.run(batchd_run(service, base_url, args.items))
    report(
        {
            "items": args.items,
            "concurrency": args.concurrency,
            "items_per_second": measured.items_per_second,
            "bare_aiohttp_requests_per_second": bare,
            "ratio_to_bare": measured.items_per_second / bare,
            # From the upload's answer on: the run alone, without the upload before it.
            "run_items_per_second": measured.run_items_per_second,
            "run_ratio_to_bare": measured.run_items_per_second / bare,
            **measured.redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
