"""Handlers for fault-injection tests, loaded by worker subprocesses by import path
(`--handlers chaos_handlers:handlers`, with tests/support on PYTHONPATH).

`chaos.append` sleeps a few milliseconds, fails transiently for a fixed share of
(item, attempt) pairs, and otherwise appends "<idempotency key> <pid>" to the file named
by BATCHD_CHAOS_LOG: the log of every time an item's effect was applied, by whom.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from batchd.worker import Handler, ItemContext, RetryableError

PARAMS_SCHEMA = {
    "type": "object",
    "properties": {
        "ms": {"type": "number", "minimum": 0},
        "fail_rate": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


def _fails(key: str, attempt: int, rate: float) -> bool:
    digest = hashlib.blake2b(f"{key}#{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32 < rate


async def append(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    await asyncio.sleep(float(params.get("ms", 2)) / 1000)
    if _fails(ctx.idempotency_key, ctx.attempt, float(params.get("fail_rate", 0))):
        raise RetryableError(f"transient failure on attempt {ctx.attempt}")
    # One short O_APPEND write per line: lines from several processes never interleave.
    line = f"{ctx.idempotency_key} {os.getpid()}\n".encode()
    descriptor = os.open(os.environ["BATCHD_CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return {"attempt": ctx.attempt}


def handlers() -> Handler:
    return Handler(
        name="chaos.append",
        description="Sleeps, fails transiently now and then, logs each application.",
        params_schema=PARAMS_SCHEMA,
        run=append,
    )
