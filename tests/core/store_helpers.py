"""Helpers for the store tests: specs, items, a one-call submit, key listings."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from redis.asyncio import Redis

from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, NewItem
from batchd.core.store import BatchStore


def new_id(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_spec(
    batch_id: str | None = None,
    *,
    chunk_size: int = 3,
    request_id: str = "",
    handler: str = "test.echo",
    metadata: dict[str, str] | None = None,
) -> BatchSpec:
    return BatchSpec(
        batch_id=batch_id or new_id(),
        handler=handler,
        options=BatchOptions(chunk_size=chunk_size),
        metadata=metadata if metadata is not None else {"team": "core"},
        request_id=request_id,
    )


def make_items(count: int, start: int = 0, prefix: str = "item") -> list[NewItem]:
    return [
        NewItem(custom_id=f"{prefix}-{i}", params_json=b'{"n":%d}' % i)
        for i in range(start, start + count)
    ]


async def submit(
    store: BatchStore, spec: BatchSpec, items: Iterable[NewItem]
) -> tuple[BatchRecord, bool]:
    session = await store.begin_upload(spec)
    await session.add_items(items)
    return await session.commit()


async def keys_of(redis: Redis, batch_id: str) -> list[bytes]:
    """Every key that mentions the batch: its own keys and its ARQ jobs."""
    return sorted([key async for key in redis.scan_iter(match=f"*{batch_id}*", count=1000)])
