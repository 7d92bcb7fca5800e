"""batchd's worker: ARQ jobs that run the chunks of batches through handlers.

The public surface for handler authors is re-exported here; see `batchd.worker.handler`
(and `setting`, from `batchd.core.config`, for a handler's own settings).
"""

from __future__ import annotations

from batchd.core.config import setting
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
    "setting",
]
