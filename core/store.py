"""The one module that talks to Redis: named operations over batches, chunks and outcomes.

See docs/design.md for the key layout and the semantics of each Lua script.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from batchd.core.domain import (
    BatchRecord,
    BatchSpec,
    BatchState,
    ClaimedChunk,
    HandlerSpec,
    HandlerStatus,
    ItemOutcome,
    ItemState,
    ItemView,
    NewItem,
)
from batchd.core.keys import Keys


class UploadSession:
    """Stages one batch's chunks, then commits it atomically (or aborts, leaving nothing)."""

    spec: BatchSpec

    async def add_items(self, items: Iterable[NewItem]) -> None:
        """Buffer items; stage every full chunk. InvalidRequest on a duplicate custom_id
        (field `items[<global index>].custom_id`)."""
        raise NotImplementedError

    @property
    def item_count(self) -> int:
        raise NotImplementedError

    async def commit(self) -> tuple[BatchRecord, bool]:
        """Make the batch visible and runnable; returns (batch, replayed).

        InvalidRequest when the batch holds no items, or when the request_id was used
        with another body; AlreadyExists when the batch id was taken meanwhile.
        """
        raise NotImplementedError

    async def abort(self) -> None:
        """Delete everything staged so far and release the batch id."""
        raise NotImplementedError


class BatchStore:
    def __init__(self, redis: Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def ping(self) -> bool:
        raise NotImplementedError

    # -- submitting -----------------------------------------------------------------
    async def begin_upload(self, spec: BatchSpec) -> UploadSession:
        """AlreadyExists if spec.batch_id is taken or being uploaded."""
        raise NotImplementedError

    async def find_request(self, request_id: str) -> BatchRecord | None:
        """The batch a request_id created, if any (lets the edge answer a replay early)."""
        raise NotImplementedError

    # -- reading --------------------------------------------------------------------
    async def get_batch(self, batch_id: str) -> BatchRecord:
        """NotFound if there is no such batch."""
        raise NotImplementedError

    async def list_batches(
        self, page_size: int, cursor: str, states: Sequence[BatchState]
    ) -> tuple[list[BatchRecord], str]:
        """Newest first; returns (batches, next cursor or "")."""
        raise NotImplementedError

    async def list_items(
        self, batch_id: str, page_size: int, cursor: str, states: Sequence[ItemState]
    ) -> tuple[list[ItemView], str]:
        """In submission order; a page may be short when a filter skips many items."""
        raise NotImplementedError

    # -- changing -------------------------------------------------------------------
    async def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Idempotent. NotFound if there is no such batch."""
        raise NotImplementedError

    # -- workers --------------------------------------------------------------------
    async def claim_chunk(self, batch_id: str, chunk: int) -> ClaimedChunk | None:
        """None when the chunk is done, cancelled or its batch is gone."""
        raise NotImplementedError

    async def record_outcomes(
        self, batch_id: str, chunk: int, outcomes: Sequence[ItemOutcome], *, release: bool
    ) -> BatchState:
        """First writer wins per item; returns the batch state after the write."""
        raise NotImplementedError

    async def publish_worker(
        self, worker_id: str, handlers: Sequence[HandlerSpec], ttl: float
    ) -> None:
        """Publish the catalog and refresh the worker's liveness (call every heartbeat)."""
        raise NotImplementedError

    async def remove_worker(self, worker_id: str) -> None:
        raise NotImplementedError

    async def get_handler(self, name: str) -> HandlerSpec | None:
        raise NotImplementedError

    async def list_handlers(self, ttl: float) -> list[HandlerStatus]:
        """Every published handler with its count of workers seen within `ttl` seconds."""
        raise NotImplementedError
