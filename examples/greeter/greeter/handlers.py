"""`greet.send`: composes a greeting and delivers it to the recipient's webhook.

An example of a batchd handler in a package of its own (docs/handlers.md walks through
it). Each item is one recipient:

    params  {"name": "Ada", "webhook": "https://hooks.example/ada", "language": "en"}
    output  {"greeting": "Hello, Ada!", "status": 200, "duplicate": false}

The webhook gets a POST of {"greeting": ...} with an `Idempotency-Key` header, stable
across retries: a receiver that has seen the key answers 409, which counts as delivered.

    2xx, 409                    SUCCEEDED (409: "duplicate": true)
    400, 422                    FAILED now, INVALID_ARGUMENT
    401, 403                    FAILED now, PERMISSION_DENIED
    404, 410                    FAILED now, NOT_FOUND
    429, 503                    retried (Retry-After honoured), and every worker slows down
    other 5xx, timeouts,        retried, UNAVAILABLE
    connection errors
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from batchd.worker import (
    BatchOptions,
    Code,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    RetryPolicy,
    SlowDown,
    WorkerInfo,
    handler,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "GREETINGS",
    "PARAMS_SCHEMA",
    "close_pool",
    "greet_send",
    "open_pool",
    "status_error",
    "webhook_host",
]

GREETINGS = {"en": "Hello, {name}!", "fr": "Bonjour, {name} !", "de": "Hallo, {name}!"}

# Checked by the server when a batch is submitted: run() never sees params that fail it.
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "webhook": {"type": "string", "pattern": "^https?://"},
        "language": {"enum": sorted(GREETINGS)},
    },
    "required": ["name", "webhook"],
    "additionalProperties": False,
}

# What a batch gets unless it says otherwise: webhooks are someone else's servers.
DEFAULT_OPTIONS = BatchOptions(
    chunk_size=50,
    max_per_second=20.0,
    item_timeout=15.0,
    retry_policy=RetryPolicy(max_attempts=4, min_backoff=1.0, max_backoff=60.0),
)

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
_FAILURES = {
    400: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    401: Code.PERMISSION_DENIED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    410: Code.NOT_FOUND,
}


def webhook_host(params: Mapping[str, Any]) -> str | None:
    """The rate-limit key of an item: its webhook's host, so that one overloaded host
    (429, 503) slows down the greetings to that host only."""
    url = URL(str(params.get("webhook", "")))
    return f"greet:{url.host}:{url.port}" if url.host else None


# The worker process's HTTP connection pool: opened by the startup hook, closed by the
# shutdown hook, shared by every item in between.
_session: aiohttp.ClientSession | None = None


@handler(
    "greet.send",
    params_schema=PARAMS_SCHEMA,
    default_options=DEFAULT_OPTIONS,
    rate_key=webhook_host,
)
async def greet_send(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    """Delivers a greeting to a webhook; returns {greeting, status, duplicate}."""
    if _session is None:
        raise RuntimeError("greet.send ran before its startup hook")
    greeting = GREETINGS[params.get("language", "en")].format(name=params["name"])
    headers = {"Idempotency-Key": ctx.idempotency_key}
    try:
        async with _session.post(
            params["webhook"], json={"greeting": greeting}, headers=headers
        ) as response:
            status = response.status
            retry_after = _retry_after(response.headers.get("Retry-After"))
    except TimeoutError as exc:
        raise RetryableError("the webhook did not answer", code=Code.DEADLINE_EXCEEDED) from exc
    except aiohttp.ClientError as exc:
        raise RetryableError(f"cannot reach the webhook: {type(exc).__name__}") from exc
    ctx.logger.info("webhook_answered", status=status, attempt=ctx.attempt)
    error = status_error(status, retry_after)
    if error is not None:
        raise error
    return {"greeting": greeting, "status": status, "duplicate": status == 409}


def status_error(status: int, retry_after: float | None) -> HandlerError | None:
    """What a webhook's answer `status` fails the item with; None: delivered (2xx, and
    409, a key the receiver has seen already)."""
    if 200 <= status < 300 or status == 409:
        return None
    if status in (429, 503):
        return SlowDown(f"the webhook answered {status}", retry_after=retry_after)
    if status >= 500:
        return RetryableError(f"the webhook answered {status}", retry_after=retry_after)
    code = _FAILURES.get(status, Code.FAILED_PRECONDITION)
    return PermanentError(f"the webhook answered {status}", code=code)


@greet_send.on_startup
async def open_pool(worker: WorkerInfo) -> None:
    """Opens the pool, as large as the items the worker runs at once."""
    global _session
    connector = aiohttp.TCPConnector(limit=worker.concurrency)
    _session = aiohttp.ClientSession(
        connector=connector, timeout=REQUEST_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
    )


@greet_send.on_shutdown
async def close_pool() -> None:
    """Closes the pool after the worker's last item."""
    global _session
    if _session is not None:
        await _session.close()
        _session = None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is left to the backoff)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
