"""batchd's worker: ARQ jobs that run the chunks of batches through handlers.

The public surface for handler authors is re-exported here; see `batchd.worker.handler`
(and `setting`, from `batchd.core.config`, for a handler's own settings; `BatchOptions`
and `RetryPolicy`, from `batchd.core.domain`, for its default options). docs/handlers.md
is the guide.
"""

from __future__ import annotations

from batchd.core.config import setting
from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.worker.handler import (
    BlockOutcome,
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    SlowDown,
    WorkerInfo,
    bulk_handler,
    handler,
    schema_of,
)

__all__ = [
    "BatchOptions",
    "BlockOutcome",
    "Code",
    "Handler",
    "HandlerError",
    "ItemContext",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "SlowDown",
    "WorkerInfo",
    "bulk_handler",
    "handler",
    "schema_of",
    "setting",
]
