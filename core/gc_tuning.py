"""The garbage collector's settings for batchd's long-running processes.

CPython collects its youngest generation every 700 net allocations of container
objects, and every so often all of them. A worker allocates several such objects per
item (its tuple, params, coroutine, outcome) and holds many for a while (claimed chunks,
outcomes waiting for a flush, a task per consumer), so at tens of thousands of items a
second it would collect hundreds of times a second, and each full collection walks
everything the process holds while the event loop stands still. A higher threshold and
freezing what startup built keep both rare (figures: docs/performance.md, `sleep`).

Reference cycles still get collected, only later: a process holds at most a threshold's
worth of young container objects more.

A server's open streams (WatchProgress, WatchBatches) each keep about ten young objects
alive between two of their messages (a wait's future and coroutines, gRPC's operations),
and a young collection walks every young object still alive: with thousands of streams
open, each collection stops the event loop for tens of milliseconds, and a batch's end,
every stream's last message and close at once, meets several. A server therefore raises
the threshold with its open streams (`scale_with_streams`): the more each collection
walks, the less often it collects (docs/performance.md, "Watch streams and the
garbage collector").
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

__all__ = [
    "YOUNG_PER_STREAM",
    "YOUNG_THRESHOLD_MAX",
    "scale_with_streams",
    "tune_gc",
    "young_threshold_for",
]

# Young objects an open stream keeps alive between its messages, about.
YOUNG_PER_STREAM = 10
# The threshold grows no further with streams (a hundred thousand of them).
YOUNG_THRESHOLD_MAX = 1_000_000
# Seconds between two looks at how many streams are open.
STREAMS_LOOK_EVERY = 1.0


def tune_gc(young_threshold: int) -> None:
    """Moves what exists now (modules, settings, handlers: what lives as long as the
    process) out of the collector's sight, and collects the youngest generation every
    `young_threshold` allocations; 0 leaves the interpreter's settings alone."""
    if young_threshold <= 0:
        return
    gc.freeze()
    _set_young(young_threshold)


def young_threshold_for(base: int, streams: int) -> int:
    """The young threshold for a process holding `streams` open streams: `base`, or
    YOUNG_PER_STREAM per stream where that is more (at most YOUNG_THRESHOLD_MAX)."""
    return max(base, min(streams * YOUNG_PER_STREAM, YOUNG_THRESHOLD_MAX))


async def scale_with_streams(streams: Callable[[], int], every: float = STREAMS_LOOK_EVERY) -> None:
    """Keeps the young threshold at `young_threshold_for(base, streams())`, looked at
    every `every` seconds, `base` being the threshold as this starts; puts `base` back
    when cancelled."""
    base = current = gc.get_threshold()[0]
    try:
        while True:
            await asyncio.sleep(every)
            wanted = young_threshold_for(base, streams())
            if wanted != current:
                _set_young(wanted)
                current = wanted
    finally:
        if current != base:
            _set_young(base)


def _set_young(threshold: int) -> None:
    """Sets the youngest generation's threshold, the older ones' left as they are."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)
