"""`greet.bulk`: greetings delivered in blocks, one POST of a JSON array per block.

An example of a handler that takes items in blocks, for a downstream with a bulk API
(docs/handlers.md, "Blocks: handlers for bulk APIs"). Each item is one recipient:

    params  {"name": "Ada", "endpoint": "http://127.0.0.1:8080/greetings", "language": "fr"}
    output  {"greeting": "Bonjour, Ada !", "status": 201, "duplicate": false}

A block's items go to their endpoint in one request, a JSON array of
{"key": <idempotency key>, "greeting": ...} (items of one block naming two endpoints make
two requests, at once). The endpoint answers 200 with an array of {"status": <code>}, one
per element in the same order, and each element's status decides its item alone, as
greet.send's answer does:

    2xx, 409                    SUCCEEDED (409: "duplicate": true)
    400, 422 / 401, 403 /       FAILED now: INVALID_ARGUMENT / PERMISSION_DENIED /
    404, 410                    NOT_FOUND
    429, 503                    retried, and every worker slows down
    other 5xx                   retried, UNAVAILABLE

A request that fails as a whole (connection error, timeout, an answer other than 2xx,
or not such an array) fails every item it carried the same way, each retried on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from batchd.worker import (
    BatchOptions,
    BlockOutcome,
    Code,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    RetryPolicy,
    WorkerInfo,
    bulk_handler,
)
from greeter.handlers import GREETINGS, REQUEST_TIMEOUT, status_error

__all__ = ["BULK_OPTIONS", "BULK_SCHEMA", "greet_bulk"]

BULK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "endpoint": {"type": "string", "pattern": "^https?://"},
        "language": {"enum": sorted(GREETINGS)},
    },
    "required": ["name", "endpoint"],
    "additionalProperties": False,
}

# Rate and concurrency still count items: 100 items a second is one full block a second.
BULK_OPTIONS = BatchOptions(
    chunk_size=500,
    max_per_second=1000.0,
    item_timeout=30.0,
    retry_policy=RetryPolicy(max_attempts=4, min_backoff=1.0, max_backoff=60.0),
)

_session: aiohttp.ClientSession | None = None


@bulk_handler("greet.bulk", block_size=100, params_schema=BULK_SCHEMA, default_options=BULK_OPTIONS)
async def greet_bulk(items: Sequence[tuple[dict[str, Any], ItemContext]]) -> list[BlockOutcome]:
    """Delivers greetings to bulk endpoints, a JSON array per request; returns
    {greeting, status, duplicate} per item."""
    greetings = [
        GREETINGS[params.get("language", "en")].format(name=params["name"]) for params, _ in items
    ]
    by_endpoint: dict[str, list[int]] = {}
    for position, (params, _) in enumerate(items):
        by_endpoint.setdefault(params["endpoint"], []).append(position)
    outcomes: list[BlockOutcome] = [{}] * len(items)

    async def deliver(endpoint: str, positions: list[int]) -> None:
        body = [{"key": items[p][1].idempotency_key, "greeting": greetings[p]} for p in positions]
        try:
            statuses = await _post(endpoint, body)
        except HandlerError as exc:  # the whole request failed: each of its items alike
            for p in positions:
                outcomes[p] = exc
            return
        for p, status in zip(positions, statuses, strict=True):
            error = status_error(status, retry_after=None)
            outcomes[p] = error or {
                "greeting": greetings[p],
                "status": status,
                "duplicate": status == 409,
            }

    await asyncio.gather(*(deliver(e, ps) for e, ps in by_endpoint.items()))
    return outcomes


async def _post(endpoint: str, body: list[dict[str, str]]) -> list[int]:
    """The status of each element of `body`, in order; raises what fails them all."""
    if _session is None:
        raise RuntimeError("greet.bulk ran before its startup hook")
    try:
        async with _session.post(endpoint, json=body) as response:
            if not 200 <= response.status < 300:
                error = status_error(response.status, retry_after=None)
                raise error or RetryableError(f"the endpoint answered {response.status}")
            answer = await response.json(content_type=None)
    except TimeoutError as exc:
        raise RetryableError("the endpoint did not answer", code=Code.DEADLINE_EXCEEDED) from exc
    except aiohttp.ClientError as exc:
        raise RetryableError(f"cannot reach the endpoint: {type(exc).__name__}") from exc
    except ValueError as exc:
        raise RetryableError("the endpoint's answer is not JSON", code=Code.INTERNAL) from exc
    if not (isinstance(answer, list) and len(answer) == len(body)):
        raise PermanentError("the endpoint's answer is not one status per element")
    statuses = [a.get("status") if isinstance(a, Mapping) else None for a in answer]
    if not all(type(s) is int for s in statuses):
        raise PermanentError("the endpoint's answer is not one status per element")
    return [int(s) for s in statuses if s is not None]


@greet_bulk.on_startup
async def open_bulk_pool(worker: WorkerInfo) -> None:
    """Opens the pool: one connection per block in flight is enough."""
    global _session
    connector = aiohttp.TCPConnector(limit=max(worker.concurrency // 10, 4))
    _session = aiohttp.ClientSession(
        connector=connector, timeout=REQUEST_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
    )


@greet_bulk.on_shutdown
async def close_bulk_pool() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None
