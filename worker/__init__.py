"""batchd's worker: ARQ jobs that run the chunks of batches through handlers.

The public surface for handler authors is re-exported here; see `batchd.worker.handler`.
"""

from __future__ import annotations

from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    SlowDown,
    WorkerInfo,
)

__all__ = [
    "Code",
    "Handler",
    "HandlerError",
    "ItemContext",
    "PermanentError",
    "RetryableError",
    "SlowDown",
    "WorkerInfo",
]
