"""The garbage collector's settings for batchd's long-running processes.

CPython collects its youngest generation every 700 net allocations of container
objects, and every so often all of them. A worker allocates several such objects per
item (its tuple, params, coroutine, outcome) and holds many for a while (claimed chunks,
outcomes waiting for a flush, a task per consumer), so at tens of thousands of items a
second it collected hundreds of times a second, and each full collection walked
everything the process holds: tens of milliseconds in which the event loop stood still.
Measured in one worker process on 100,000 `sleep` items of 10 ms at a concurrency of 500
(chunks of 1,000): 389 collections took 0.25 s of its 1.55 s of CPU, and one sleep in a
hundred overshot by 44 ms; with a threshold of 10,000 and what startup built frozen, 3
collections, 1.26 s of CPU, and 2.6 ms.

Reference cycles still get collected, only later: a process holds at most a threshold's
worth of young container objects more.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(young_threshold: int) -> None:
    """Moves what exists now (modules, settings, handlers: what lives as long as the
    process) out of the collector's sight, and collects the youngest generation every
    `young_threshold` allocations; 0 leaves the interpreter's settings alone."""
    if young_threshold <= 0:
        return
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
