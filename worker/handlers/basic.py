"""`noop` and `sleep`: handlers for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from batchd.core.domain import BatchOptions
from batchd.worker.handler import BlockOutcome, Code, Handler, ItemContext, PermanentError

__all__ = ["basic_handlers", "noop_handler", "sleep_handler"]


async def _noop(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    return {}


async def _noop_many(items: Sequence[tuple[dict[str, Any], ItemContext]]) -> list[BlockOutcome]:
    return [{} for _ in items]


async def _sleep(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    seconds = float(params.get("seconds", 0))
    await asyncio.sleep(seconds)
    if params.get("fail"):
        raise PermanentError("failed as asked (fail: true)", code=Code.ABORTED)
    return {"slept": seconds}


def noop_handler() -> Handler:
    return Handler(
        name="noop",
        description="Does nothing and returns {}. Takes any params object.",
        params_schema={"type": "object"},
        run=_noop,
        run_many=_noop_many,
        default_options=BatchOptions(chunk_size=1000, block_size=1),
    )


def sleep_handler() -> Handler:
    return Handler(
        name="sleep",
        description=(
            'Sleeps `seconds`, then returns {"slept": seconds}, or fails permanently '
            "(ABORTED) when `fail` is true."
        ),
        params_schema={
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
                "fail": {"type": "boolean"},
            },
            "required": ["seconds"],
            "additionalProperties": False,
        },
        run=_sleep,
    )


def basic_handlers() -> list[Handler]:
    """`noop` and `sleep`, fresh: the target of batchd's `basic` entry point."""
    return [noop_handler(), sleep_handler()]
