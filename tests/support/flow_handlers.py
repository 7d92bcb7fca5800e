"""Handlers for flow-control tests, loaded by worker subprocesses by import path
(`--handlers flow_handlers:handlers`, with tests/support on PYTHONPATH).

`flow.record` sleeps `ms` milliseconds and appends "<start> <end> <pid>" (time.time())
to the file named by BATCHD_FLOW_LOG: when each item ran, for rate and overlap checks.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from batchd.worker import Handler, ItemContext

PARAMS_SCHEMA = {
    "type": "object",
    "properties": {"ms": {"type": "number", "minimum": 0}},
    "additionalProperties": False,
}


async def record(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    start = time.time()
    await asyncio.sleep(float(params.get("ms", 10)) / 1000)
    end = time.time()
    # One short O_APPEND write per line: lines from several processes never interleave.
    line = f"{start:.6f} {end:.6f} {os.getpid()}\n".encode()
    descriptor = os.open(os.environ["BATCHD_FLOW_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return {}


def handlers() -> Handler:
    return Handler(
        name="flow.record",
        description="Sleeps, then logs when it started and ended.",
        params_schema=PARAMS_SCHEMA,
        run=record,
    )


def read_runs(path: str | os.PathLike[str]) -> list[tuple[float, float, int]]:
    """Every run logged: (start, end, pid), by start."""
    runs = []
    with open(path) as log:
        for line in log:
            start, end, pid = line.split()
            runs.append((float(start), float(end), int(pid)))
    return sorted(runs)


def max_in_window(starts: list[float], window: float = 1.0) -> int:
    """The most starts in any `window`-second interval (sorted starts)."""
    best, first = 0, 0
    for last, t in enumerate(starts):
        while starts[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def peak_overlap(runs: list[tuple[float, float, int]]) -> int:
    """The most runs in progress at once."""
    events = sorted([(s, 1) for s, _, _ in runs] + [(e, -1) for _, e, _ in runs])
    # At equal times an end sorts first (-1 < 1): touching intervals do not overlap.
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak
