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
