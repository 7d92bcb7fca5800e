"""`test.append`, loaded by worker subprocesses by import path
(`BATCHD_HANDLERS=append_handler:handler`, with tests/support on PYTHONPATH).

Each item sleeps `ms` milliseconds, then appends "<idempotency key> <pid>" to the file
`log`: the record of every time an item's effect was applied, and by which process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from batchd.worker import Handler, ItemContext

NAME = "test.append"


async def _append(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    await asyncio.sleep(float(params.get("ms", 0)) / 1000)
    # One short O_APPEND write per line: lines from several processes never interleave.
    line = f"{ctx.idempotency_key} {os.getpid()}\n".encode()
    descriptor = os.open(params["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return {"pid": os.getpid()}


def handler() -> Handler:
    return Handler(
        name=NAME,
        description="Sleeps `ms`, then appends the item's idempotency key to `log`.",
        params_schema={
            "type": "object",
            "properties": {"ms": {"type": "number"}, "log": {"type": "string"}},
            "required": ["log"],
        },
        run=_append,
    )
