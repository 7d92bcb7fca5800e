"""`test.timeline`, loaded by worker subprocesses by import path
(`BATCHD_HANDLERS=timeline_handler:handler`, with tests/support on PYTHONPATH): a
downstream that sees every attempt.

Each attempt appends "start <idempotency key> <pid> <time.time()>" to the file named by
BATCHD_TIMELINE_LOG, sleeps `ms` milliseconds, then appends "end ..." (the effect
applied: one execution) or, when the worker cancels it, "cancel ...".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchd.worker import Handler, ItemContext

NAME = "test.timeline"


def _note(event: str, key: str) -> None:
    # One short O_APPEND write per line: lines from several processes never interleave.
    line = f"{event} {key} {os.getpid()} {time.time():.6f}\n".encode()
    descriptor = os.open(os.environ["BATCHD_TIMELINE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


async def _run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    _note("start", ctx.idempotency_key)
    try:
        await asyncio.sleep(float(params.get("ms", 0)) / 1000)
    except asyncio.CancelledError:
        _note("cancel", ctx.idempotency_key)
        raise
    _note("end", ctx.idempotency_key)
    return {"pid": os.getpid()}


def handler() -> Handler:
    return Handler(
        name=NAME,
        description="Sleeps `ms`, noting each attempt's start and end (or cancel).",
        params_schema={"type": "object", "properties": {"ms": {"type": "number"}}},
        run=_run,
    )


@dataclass(frozen=True)
class Event:
    kind: str  # start, end or cancel
    key: str  # the item's idempotency key
    pid: int
    at: float  # time.time()


def read_timeline(path: Path) -> list[Event]:
    """Every event noted so far, in order."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        kind, key, pid, at = line.split(" ")
        events.append(Event(kind, key, int(pid), float(at)))
    return events
